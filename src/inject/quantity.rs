//! Kubernetes resource quantities (`100m`, `1Gi`, `2000m`), parsed and written in canonical form.
//!
//! The API server stores quantities canonically (`2000m` becomes `2`, `1024Mi` becomes `1Gi`);
//! writing them the same way makes the injected pod equal to what the cluster will show.

/// A quantity that does not parse, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    DecimalSi,
    BinarySi,
    DecimalExponent,
}

/// An exact value `mantissa * 10^exp10 * 1024^exp1024`, with the format it was written in.
struct Parsed {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp1024: u32,
    format: Format,
}

const ACCEPTED: &str = "a Kubernetes quantity such as 100m, 0.5, 128Mi or 1Gi";

fn parse(text: &str) -> Result<Parsed, QuantityError> {
    let err = |why: &str| QuantityError(format!("{why}; expected {ACCEPTED}"));
    if text.is_empty() {
        return Err(err("empty quantity"));
    }
    if text.chars().any(char::is_control) {
        return Err(err("control characters are not allowed"));
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut negative = false;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        negative = bytes[0] == b'-';
        i = 1;
    }
    let digits_start = i;
    let mut mantissa: u128 = 0;
    let mut exp10: i32 = 0;
    let mut seen_digit = false;
    let mut in_fraction = false;
    while i < bytes.len() {
        match bytes[i] {
            c @ b'0'..=b'9' => {
                seen_digit = true;
                mantissa = mantissa
                    .checked_mul(10)
                    .and_then(|m| m.checked_add(u128::from(c - b'0')))
                    .ok_or_else(|| err("too many digits"))?;
                if in_fraction {
                    exp10 -= 1;
                }
            }
            b'.' if !in_fraction => in_fraction = true,
            _ => break,
        }
        i += 1;
    }
    if !seen_digit || i == digits_start {
        return Err(err("no number"));
    }
    let suffix = &text[i..];
    let (format, extra10, exp1024) = match suffix {
        "" => (Format::DecimalSi, 0, 0),
        "n" => (Format::DecimalSi, -9, 0),
        "u" => (Format::DecimalSi, -6, 0),
        "m" => (Format::DecimalSi, -3, 0),
        "k" => (Format::DecimalSi, 3, 0),
        "M" => (Format::DecimalSi, 6, 0),
        "G" => (Format::DecimalSi, 9, 0),
        "T" => (Format::DecimalSi, 12, 0),
        "P" => (Format::DecimalSi, 15, 0),
        "E" => (Format::DecimalSi, 18, 0),
        "Ki" => (Format::BinarySi, 0, 1),
        "Mi" => (Format::BinarySi, 0, 2),
        "Gi" => (Format::BinarySi, 0, 3),
        "Ti" => (Format::BinarySi, 0, 4),
        "Pi" => (Format::BinarySi, 0, 5),
        "Ei" => (Format::BinarySi, 0, 6),
        s if s.starts_with(['e', 'E']) => {
            let n: i32 = s[1..]
                .parse()
                .map_err(|_| err(&format!("unknown suffix {s:?}")))?;
            if !(-30..=30).contains(&n) {
                return Err(err("exponent out of range"));
            }
            (Format::DecimalExponent, n, 0)
        }
        s => return Err(err(&format!("unknown suffix {s:?}"))),
    };
    Ok(Parsed {
        negative,
        mantissa,
        exp10: exp10 + extra10,
        exp1024,
        format,
    })
}

/// Checks that `text` is a valid quantity.
pub fn validate(text: &str) -> Result<(), QuantityError> {
    parse(text).map(|_| ())
}

/// The canonical spelling of a quantity, as the API server would store it.
pub fn canonical(text: &str) -> Result<String, QuantityError> {
    let q = parse(text)?;
    let sign = if q.negative && q.mantissa != 0 {
        "-"
    } else {
        ""
    };

    // Binary quantities stay binary when they are a whole number of bytes of at least 1Ki.
    if q.format == Format::BinarySi
        && let Some(bytes) = whole_bytes(&q)
        && bytes >= 1024
    {
        let mut value = bytes;
        let mut power = 0;
        while power < 6 && value % 1024 == 0 {
            value /= 1024;
            power += 1;
        }
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][power];
        return Ok(format!("{sign}{value}{suffix}"));
    }

    // Decimal: an exact mantissa and a power of ten, the exponent brought down to a multiple
    // of three so it has an SI suffix.
    let (mut mantissa, mut exp) = match whole_decimal(&q) {
        Some(v) => v,
        None => {
            return Err(QuantityError(format!(
                "{text:?} is too large; expected {ACCEPTED}"
            )));
        }
    };
    if mantissa == 0 {
        return Ok("0".to_string());
    }
    while mantissa % 10 == 0 {
        mantissa /= 10;
        exp += 1;
    }
    // Below a nano-unit Kubernetes rounds up to 1n.
    if exp < -9 {
        let drop = (-9 - exp) as u32;
        let div = 10u128.pow(drop.min(38));
        mantissa = mantissa.div_ceil(div);
        exp = -9;
        // Rounding up can carry into new trailing zeros (0.0999999999 is 100000000n): strip
        // them too, or the canonical form would not be canonical itself.
        while mantissa % 10 == 0 {
            mantissa /= 10;
            exp += 1;
        }
    }
    let exp3 = exp.div_euclid(3) * 3;
    let exp3 = exp3.min(18);
    // Above 10^18 the digits stay in the mantissa, which can exceed u128 (1e30 with 38 zeros).
    mantissa = u32::try_from(exp - exp3)
        .ok()
        .and_then(|shift| 10u128.checked_pow(shift))
        .and_then(|scale| mantissa.checked_mul(scale))
        .ok_or_else(|| QuantityError(format!("{text:?} is too large; expected {ACCEPTED}")))?;
    if q.format == Format::DecimalExponent {
        return Ok(if exp3 == 0 {
            format!("{sign}{mantissa}")
        } else {
            format!("{sign}{mantissa}e{exp3}")
        });
    }
    let suffix = match exp3 {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        _ => "E",
    };
    Ok(format!("{sign}{mantissa}{suffix}"))
}

/// The value in bytes when it is a whole number.
fn whole_bytes(q: &Parsed) -> Option<u128> {
    let mut value = q.mantissa.checked_mul(1024u128.checked_pow(q.exp1024)?)?;
    let mut exp = q.exp10;
    while exp < 0 {
        if value % 10 != 0 {
            return None;
        }
        value /= 10;
        exp += 1;
    }
    value.checked_mul(10u128.checked_pow(exp as u32)?)
}

/// The value as `mantissa * 10^exp` (binary multipliers folded into the mantissa).
fn whole_decimal(q: &Parsed) -> Option<(u128, i32)> {
    Some((
        q.mantissa.checked_mul(1024u128.checked_pow(q.exp1024)?)?,
        q.exp10,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_match_the_api_server() {
        for (input, want) in [
            ("2000m", "2"),
            ("100m", "100m"),
            ("1024Mi", "1Gi"),
            ("128Mi", "128Mi"),
            ("1.5Gi", "1536Mi"),
            ("0.5", "500m"),
            ("1000", "1k"),
            ("1", "1"),
            ("10m", "10m"),
            ("0", "0"),
            ("512", "512"),
            ("1e3", "1e3"),
            ("0.1Ki", "102400m"),
            ("+2", "2"),
            ("-100m", "-100m"),
        ] {
            assert_eq!(canonical(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn invalid_quantities_say_what_is_accepted() {
        for bad in ["", "abc", "1x", "1.2.3", "m", "1\n", "1Kb"] {
            let err = canonical(bad).unwrap_err().0;
            assert!(
                err.contains("expected a Kubernetes quantity"),
                "{bad}: {err}"
            );
        }
    }
}
