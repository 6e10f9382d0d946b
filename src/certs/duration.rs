//! Durations written the way Kubernetes users write them (`87600h`, `90d`, `1h30m`, `45s`), so the
//! chart's values read like cert-manager's `duration` fields.

use std::time::Duration;

/// Parses a sequence of `<integer><unit>` terms with units `d`, `h`, `m`, `s`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. 2160h, 90d or 1h30m".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for ch in text.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
            continue;
        }
        let unit: u64 = match ch {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?}; accepted units are d, h, m, s"
                ));
            }
        };
        if digits.is_empty() {
            return Err(format!("{text:?}: unit {ch:?} without a number"));
        }
        let n: u64 = digits
            .parse()
            .map_err(|e| format!("{text:?}: bad number {digits:?}: {e}"))?;
        total = n
            .checked_mul(unit)
            .and_then(|s| total.checked_add(s))
            .ok_or_else(|| format!("{text:?}: duration too large"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "{text:?}: number {digits:?} has no unit (d, h, m or s)"
        ));
    }
    if total == 0 {
        return Err(format!("{text:?}: duration must be positive"));
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_combined_terms() {
        assert_eq!(parse("87600h"), Ok(Duration::from_secs(87_600 * 3_600)));
        assert_eq!(parse("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse(" 45s "), Ok(Duration::from_secs(45)));
        assert_eq!(
            parse("1d2h3m4s"),
            Ok(Duration::from_secs(86_400 + 7_200 + 180 + 4))
        );
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in [
            "",
            "10",
            "h",
            "10w",
            "0h",
            "1.5h",
            "-1h",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
