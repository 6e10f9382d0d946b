//! The embedded defaults. They are the very files the Helm chart ships (`charts/sidecar-injector/
//! files/`), so the chart's ConfigMap and the binary's built-in configuration cannot drift apart.

/// `values`: Istio's Helm values with a real hub and tag.
pub(crate) const VALUES: &str = include_str!("../../charts/sidecar-injector/files/values.yaml");

/// `mesh`: Istio's default MeshConfig.
pub(crate) const MESH: &str = include_str!("../../charts/sidecar-injector/files/mesh.yaml");

/// `config` without its templates.
const CONFIG: &str = include_str!("../../charts/sidecar-injector/files/config.yaml");

/// The shipped templates, by name: the chart's `files/templates/NAME.yaml.j2`, every one of them
/// (a test checks that the list and the directory agree).
pub(crate) const TEMPLATES: &[(&str, &str)] = &[
    (
        "sidecar",
        include_str!("../../charts/sidecar-injector/files/templates/sidecar.yaml.j2"),
    ),
    (
        "gateway",
        include_str!("../../charts/sidecar-injector/files/templates/gateway.yaml.j2"),
    ),
    (
        "grpc-agent",
        include_str!("../../charts/sidecar-injector/files/templates/grpc-agent.yaml.j2"),
    ),
    (
        "grpc-simple",
        include_str!("../../charts/sidecar-injector/files/templates/grpc-simple.yaml.j2"),
    ),
];

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The chart ships every file under files/templates/; the binary must embed the same set, or
    /// a pod asking for a template would be injected by the chart's ConfigMap and refused by the
    /// binary's defaults (or the other way round).
    #[test]
    fn every_shipped_template_is_embedded() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/sidecar-injector/files/templates"
        );
        let mut shipped: Vec<(String, String)> = std::fs::read_dir(dir)
            .expect("templates directory")
            .filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?.strip_suffix(".yaml.j2")?;
                Some((name.to_string(), std::fs::read_to_string(&path).ok()?))
            })
            .collect();
        shipped.sort();
        let mut embedded: Vec<(String, String)> = TEMPLATES
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        embedded.sort();
        assert_eq!(
            embedded.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            shipped.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        assert!(embedded == shipped, "embedded template text differs");
    }
}
