//! The embedded defaults. They are the very files the Helm chart ships (`charts/sidecar-injector/
//! files/`), so the chart's ConfigMap and the binary's built-in configuration cannot drift apart.

/// `values`: Istio's Helm values with a real hub and tag.
pub(crate) const VALUES: &str = include_str!("../../charts/sidecar-injector/files/values.yaml");

/// `mesh`: Istio's default MeshConfig.
pub(crate) const MESH: &str = include_str!("../../charts/sidecar-injector/files/mesh.yaml");

/// `config` without its templates.
const CONFIG: &str = include_str!("../../charts/sidecar-injector/files/config.yaml");

/// The shipped templates, by name.
pub(crate) const TEMPLATES: &[(&str, &str)] = &[(
    "sidecar",
    include_str!("../../charts/sidecar-injector/files/templates/sidecar.yaml.j2"),
)];

/// The `config` key as the chart renders it: the settings plus `templates:` with each template
/// as a literal block.
pub(crate) fn config_with_templates() -> String {
    let mut out = String::from(CONFIG);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("templates:\n");
    for (name, text) in TEMPLATES {
        out.push_str("  ");
        out.push_str(name);
        out.push_str(": |\n");
        for line in text.lines() {
            if !line.is_empty() {
                out.push_str("    ");
                out.push_str(line);
            }
            out.push('\n');
        }
    }
    out
}
