//! The proxy and init images: `{hub}/{image}:{tag}[-{type}]`, as istiod builds them.

use serde_json::Value;

fn text(values: &Value, pointer: &str) -> String {
    match values.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

/// `image` as given when it already names a registry (contains `/`), else built from the hub and
/// tag, with the image type (`distroless`, `debug`) as a tag suffix; `default` means none.
pub(crate) fn image(values: &Value, image_pointer: &str, image_type: Option<&str>) -> String {
    let image = text(values, image_pointer);
    if image.contains('/') {
        return image;
    }
    let hub = text(values, "/global/hub");
    let mut tag = text(values, "/global/tag");
    if let Some(kind) = image_type {
        for suffix in ["-distroless", "-debug"] {
            if let Some(stripped) = tag.strip_suffix(suffix) {
                tag = stripped.to_string();
            }
        }
        if !kind.is_empty() && kind != "default" {
            tag = format!("{tag}-{kind}");
        }
    }
    format!("{hub}/{image}:{tag}")
}

/// The image type of the proxy: the annotation, else ProxyConfig `image.imageType`, else
/// `global.variant`.
pub(crate) fn proxy_image_type<'a>(
    annotation: Option<&'a str>,
    proxy_config: &'a Value,
    values: &'a Value,
) -> Option<&'a str> {
    annotation
        .or_else(|| {
            proxy_config
                .pointer("/image/imageType")
                .and_then(Value::as_str)
        })
        .or_else(|| values.pointer("/global/variant").and_then(Value::as_str))
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_hub_image_tag_and_type() {
        let v = json!({"global": {"hub": "docker.io/istio", "tag": "1.28.0-distroless", "proxy": {"image": "proxyv2"}}});
        assert_eq!(
            image(&v, "/global/proxy/image", None),
            "docker.io/istio/proxyv2:1.28.0-distroless"
        );
        assert_eq!(
            image(&v, "/global/proxy/image", Some("debug")),
            "docker.io/istio/proxyv2:1.28.0-debug"
        );
        assert_eq!(
            image(&v, "/global/proxy/image", Some("default")),
            "docker.io/istio/proxyv2:1.28.0"
        );
        let v =
            json!({"global": {"hub": "h", "tag": "t", "proxy": {"image": "my.registry/proxy:1"}}});
        assert_eq!(
            image(&v, "/global/proxy/image", Some("distroless")),
            "my.registry/proxy:1"
        );
    }
}
