//! The effective ProxyConfig of a pod: the mesh's `defaultConfig` overlaid with the
//! `proxy.istio.io/config` annotation, and the cleaned JSON the proxy receives as PROXY_CONFIG.

use serde_json::{Map, Value, json};

use crate::config::deep_merge;

/// `mesh.defaultConfig` with the annotation (already validated) applied on top.
pub(crate) fn effective(mesh: &Value, annotation: Option<&str>) -> Value {
    let mut config = match mesh.get("defaultConfig") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Object(Map::new()),
    };
    if let Some(text) = annotation
        && let Ok(overlay @ Value::Object(_)) = crate::yaml::parse_one(text)
    {
        deep_merge(&mut config, &overlay);
    }
    config
}

/// Istio's built-in ProxyConfig defaults. PROXY_CONFIG carries only what differs from them, so
/// a default mesh gives `{}`, as istiod writes.
fn istio_defaults(istio_namespace: &str) -> Value {
    json!({
        "binaryPath": "/usr/local/bin/envoy",
        "configPath": "./etc/istio/proxy",
        "controlPlaneAuthPolicy": "MUTUAL_TLS",
        "discoveryAddress": format!("istiod.{istio_namespace}.svc:15012"),
        "drainDuration": "45s",
        "proxyAdminPort": 15000,
        "serviceCluster": "istio-proxy",
        "statNameLength": 189,
        "statusPort": 15020,
        "terminationDrainDuration": "5s",
    })
}

/// The PROXY_CONFIG value: compact JSON of the fields that differ from the defaults, keys sorted.
pub(crate) fn cleaned_json(config: &Value, istio_namespace: &str) -> String {
    let defaults = istio_defaults(istio_namespace);
    let mut kept: Vec<(&String, &Value)> = config
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, v)| defaults.get(k.as_str()) != Some(v) && !v.is_null())
                .collect()
        })
        .unwrap_or_default();
    kept.sort_by(|a, b| a.0.cmp(b.0));
    let map: Map<String, Value> = kept
        .into_iter()
        .map(|(k, v)| (k.clone(), sorted(v)))
        .collect();
    Value::Object(map).to_string()
}

/// A copy with every mapping's keys sorted (serde_json keeps insertion order here).
pub(crate) fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), sorted(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

/// What a ProxyConfig field holds, for the fields the injector knows (Istio's `ProxyConfig`
/// message, by its JSON names).
#[derive(Clone, Copy)]
enum Field {
    Text,
    Bool,
    Port,
    Count,
    Duration,
    Strings,
    StringMap,
    Mapping,
    OneOf(&'static [&'static str]),
}

const FIELDS: &[(&str, Field)] = &[
    ("configPath", Field::Text),
    ("binaryPath", Field::Text),
    ("serviceCluster", Field::Text),
    ("drainDuration", Field::Duration),
    ("parentShutdownDuration", Field::Duration),
    ("discoveryAddress", Field::Text),
    ("discoveryRefreshDelay", Field::Duration),
    ("zipkinAddress", Field::Text),
    ("connectTimeout", Field::Duration),
    ("statsdUdpAddress", Field::Text),
    ("envoyMetricsServiceAddress", Field::Text),
    ("proxyAdminPort", Field::Port),
    ("availabilityZone", Field::Text),
    (
        "controlPlaneAuthPolicy",
        Field::OneOf(&["NONE", "MUTUAL_TLS", "INHERIT"]),
    ),
    ("customConfigFile", Field::Text),
    ("statNameLength", Field::Count),
    ("concurrency", Field::Count),
    ("proxyBootstrapTemplatePath", Field::Text),
    (
        "interceptionMode",
        Field::OneOf(&["REDIRECT", "TPROXY", "NONE"]),
    ),
    ("tracing", Field::Mapping),
    ("envoyAccessLogService", Field::Mapping),
    ("envoyMetricsService", Field::Mapping),
    ("proxyMetadata", Field::StringMap),
    ("runtimeValues", Field::StringMap),
    ("statusPort", Field::Port),
    ("extraStatTags", Field::Strings),
    ("gatewayTopology", Field::Mapping),
    ("terminationDrainDuration", Field::Duration),
    ("meshId", Field::Text),
    ("readinessProbe", Field::Mapping),
    ("proxyStatsMatcher", Field::Mapping),
    ("holdApplicationUntilProxyStarts", Field::Bool),
    ("caCertificatesPem", Field::Strings),
    ("image", Field::Mapping),
    ("privateKeyProvider", Field::Mapping),
    ("proxyHeaders", Field::Mapping),
    ("fileFlushInterval", Field::Duration),
    ("fileFlushMinSizeKb", Field::Count),
];

/// Checks a ProxyConfig (the `proxy.istio.io/config` annotation, or the mesh's
/// `defaultConfig`: one set of rules for both). `Err` names the first field of the wrong type
/// and what it accepts; `Ok` holds a warning for each field Istio's ProxyConfig does not have,
/// naming the closest one (such a field is passed on to the proxy as written).
pub(crate) fn check(config: &Map<String, Value>) -> Result<Vec<String>, String> {
    let mut warnings = Vec::new();
    for (key, value) in config {
        // protobuf's JSON reader takes the proto field names too (`hold_application_...`).
        let camel = camel_case(key);
        let Some((_, field)) = FIELDS.iter().find(|(name, _)| *name == camel) else {
            warnings.push(match closest(key) {
                Some(near) => format!(
                    "{key:?} is not a ProxyConfig field; did you mean {near:?}? (passed to the proxy as written)"
                ),
                None => format!(
                    "{key:?} is not a ProxyConfig field (passed to the proxy as written)"
                ),
            });
            continue;
        };
        if value.is_null() {
            continue; // unset
        }
        let (ok, accepted): (bool, String) = match field {
            Field::Text => (value.is_string(), "a string".into()),
            Field::Bool => (value.is_boolean(), "true or false".into()),
            Field::Port => (
                value.as_u64().is_some_and(|p| p <= 65535),
                "a port number from 0 to 65535".into(),
            ),
            Field::Count => (
                value.as_u64().is_some_and(|n| n <= u64::from(u32::MAX)),
                "a whole number".into(),
            ),
            Field::Duration => (
                value.as_str().is_some_and(is_duration),
                "a duration such as 5s, 1.5s or 1m30s".into(),
            ),
            Field::Strings => (
                value
                    .as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string)),
                "a list of strings".into(),
            ),
            Field::StringMap => (
                value
                    .as_object()
                    .is_some_and(|m| m.values().all(Value::is_string)),
                "a mapping of names to string values".into(),
            ),
            Field::Mapping => (value.is_object(), "a mapping".into()),
            Field::OneOf(options) => (
                value.as_str().is_some_and(|v| options.contains(&v)),
                options.join(", "),
            ),
        };
        if !ok {
            return Err(format!("field {key:?} is {value}; accepted: {accepted}"));
        }
    }
    Ok(warnings)
}

fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Go's `time.ParseDuration` syntax, which Istio's durations accept: `5s`, `1.5s`, `1m30s`.
fn is_duration(text: &str) -> bool {
    let mut rest = text.strip_prefix(['+', '-']).unwrap_or(text);
    if rest == "0" {
        return true;
    }
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..digits];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "µs", "ms", "s", "m", "h"]
            .into_iter()
            .find(|u| rest.starts_with(u) && !(u == &"m" && rest.starts_with("ms")));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// The known field nearest to `key` by edit distance, when it is near enough to be a typo.
fn closest(key: &str) -> Option<&'static str> {
    let key = camel_case(key).to_ascii_lowercase();
    FIELDS
        .iter()
        .map(|(name, _)| (edit_distance(&key, &name.to_ascii_lowercase()), *name))
        .filter(|(d, name)| *d <= (name.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, name)| name)
}

/// Levenshtein distance, by characters. The inputs are mapping keys: bounded by the YAML
/// reader's key length limit, and the table is one row.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_of_rules_for_types_and_unknown_fields() {
        let check_one = |v: Value| check(v.as_object().unwrap());
        assert_eq!(
            check_one(json!({"holdApplicationUntilProxyStarts": "yes please"})),
            Err("field \"holdApplicationUntilProxyStarts\" is \"yes please\"; accepted: true or false".into())
        );
        assert!(check_one(json!({"terminationDrainDuration": 30})).is_err());
        assert!(
            check_one(json!({"drainDuration": "1m30s", "concurrency": 2}))
                .unwrap()
                .is_empty()
        );
        assert!(
            check_one(json!({"hold_application_until_proxy_starts": true}))
                .unwrap()
                .is_empty()
        );
        let warnings =
            check_one(json!({"holdApplicationUntilProxyStart": true, "zzz": 1})).unwrap();
        assert_eq!(warnings.len(), 2);
        assert!(
            warnings[0].contains("did you mean \"holdApplicationUntilProxyStarts\""),
            "{warnings:?}"
        );
        assert!(!warnings[1].contains("did you mean"), "{warnings:?}");
        assert!(check_one(json!({"statusport": 15020})).unwrap()[0].contains("\"statusPort\""));
    }

    #[test]
    fn durations_follow_go() {
        for ok in ["5s", "1.5s", "1m30s", "0", "100ms", "2h"] {
            assert!(is_duration(ok), "{ok}");
        }
        for bad in ["", "5", "s", "1.2.3s", "5 s", "yes", "1d"] {
            assert!(!is_duration(bad), "{bad}");
        }
    }

    #[test]
    fn default_mesh_gives_empty_proxy_config() {
        let mesh = crate::yaml::parse_one(include_str!(
            "../../charts/sidecar-injector/files/mesh.yaml"
        ))
        .unwrap();
        let config = effective(&mesh, None);
        assert_eq!(cleaned_json(&config, "istio-system"), "{}");
    }

    #[test]
    fn annotation_overlays_and_shows_in_proxy_config() {
        let mesh = json!({"defaultConfig": {"statusPort": 15020, "proxyMetadata": {"A": "1"}}});
        let config = effective(
            &mesh,
            Some("{holdApplicationUntilProxyStarts: true, proxyMetadata: {B: '2'}}"),
        );
        assert_eq!(config["proxyMetadata"], json!({"A": "1", "B": "2"}));
        assert_eq!(
            cleaned_json(&config, "istio-system"),
            r#"{"holdApplicationUntilProxyStarts":true,"proxyMetadata":{"A":"1","B":"2"}}"#
        );
    }
}
