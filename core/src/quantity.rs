//! Kubernetes resource quantities (`100m`, `1.5`, `128Mi`, `1G`, `1e3`) as integers.
//!
//! CPU is handled in millicores and everything else in whole units (bytes for memory),
//! rounding up as Kubernetes does when a value is not a whole number of the unit.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity string that could not be parsed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantity {text:?}: {message}")]
pub struct QuantityError {
    /// The text.
    pub text: String,
    /// What was expected.
    pub message: String,
}

/// Parses a quantity into thousandths of its unit (millicores for CPU, millibytes for
/// memory), rounding up. Returns `None` for an overflowing value.
pub fn parse_milli(text: &str) -> Result<i128, QuantityError> {
    let err = |message: &str| QuantityError {
        text: text.to_string(),
        message: message.to_string(),
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(err("empty"));
    }
    let (sign, t) = match t.as_bytes()[0] {
        b'-' => (-1i128, &t[1..]),
        b'+' => (1, &t[1..]),
        _ => (1, t),
    };
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(num_end);
    if num.is_empty() || num == "." {
        return Err(err("expected a number"));
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    // value = digits / 10^frac_len, scaled by the suffix.
    let digits: String = format!("{int_part}{frac_part}");
    let mut mantissa: i128 = digits.parse().map_err(|_| err("number too large"))?;
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut mult2: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => mult2 = 10,
        "Mi" => mult2 = 20,
        "Gi" => mult2 = 30,
        "Ti" => mult2 = 40,
        "Pi" => mult2 = 50,
        "Ei" => mult2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..]
                .parse()
                .map_err(|_| err("expected an exponent after e"))?;
            exp10 += e;
        }
        _ => return Err(err(
            "unknown suffix (expected one of n u m k M G T P E Ki Mi Gi Ti Pi Ei, or an exponent)",
        )),
    }
    mantissa = mantissa
        .checked_mul(1i128 << mult2)
        .ok_or_else(|| err("number too large"))?;
    // Convert to milli-units.
    exp10 += 3;
    let value = if exp10 >= 0 {
        mantissa
            .checked_mul(
                10i128
                    .checked_pow(exp10 as u32)
                    .ok_or_else(|| err("number too large"))?,
            )
            .ok_or_else(|| err("number too large"))?
    } else {
        let div = 10i128
            .checked_pow((-exp10) as u32)
            .ok_or_else(|| err("number too small"))?;
        (mantissa + div - 1) / div
    };
    Ok(sign * value)
}

/// A quantity in millicores (for CPU): `"250m"` → 250, `"2"` → 2000.
pub fn cpu_millis(q: &Quantity) -> Result<i64, QuantityError> {
    parse_milli(&q.0).map(|v| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
}

/// A quantity in whole units, rounded up (for memory, storage, pods, extended resources):
/// `"128Mi"` → 134217728.
pub fn units(q: &Quantity) -> Result<i64, QuantityError> {
    parse_milli(&q.0).map(|v| {
        let whole = if v >= 0 { (v + 999) / 1000 } else { v / 1000 };
        whole.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    })
}

/// Whether a resource name is measured in millicores (only `cpu`).
pub fn is_milli_resource(name: &str) -> bool {
    name == "cpu"
}

/// A quantity of resource `name` in its scheduler unit: millicores for `cpu`, whole units
/// for everything else.
pub fn resource_value(name: &str, q: &Quantity) -> Result<i64, QuantityError> {
    if is_milli_resource(name) {
        cpu_millis(q)
    } else {
        units(q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn parses_kubernetes_quantities() {
        assert_eq!(cpu_millis(&q("250m")).unwrap(), 250);
        assert_eq!(cpu_millis(&q("2")).unwrap(), 2000);
        assert_eq!(cpu_millis(&q("0.5")).unwrap(), 500);
        assert_eq!(cpu_millis(&q("1.0001")).unwrap(), 1001);
        assert_eq!(units(&q("128Mi")).unwrap(), 128 << 20);
        assert_eq!(units(&q("1G")).unwrap(), 1_000_000_000);
        assert_eq!(units(&q("1e3")).unwrap(), 1000);
        assert_eq!(units(&q("1.5Gi")).unwrap(), 3 << 29);
        assert_eq!(units(&q("100m")).unwrap(), 1);
        assert_eq!(units(&q("110")).unwrap(), 110);
        assert_eq!(cpu_millis(&q("-1")).unwrap(), -1000);
    }

    #[test]
    fn rejects_bad_quantities() {
        assert!(units(&q("")).is_err());
        assert!(units(&q("12X"))
            .unwrap_err()
            .to_string()
            .contains("unknown suffix"));
        assert!(units(&q("Mi")).is_err());
    }
}
