//! Kubernetes resource quantities (`250m`, `2`, `512Mi`, `2Gi`, `1G`, `1e3`) as integers.
//!
//! CPU becomes millicores and memory bytes, rounded up as the API server's `MilliValue()`/`Value()`
//! do, so a request of `0.1m` still counts as one millicore. Pure: no I/O, plain `#[test]`s.

/// A quantity string that is not a valid non-negative Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity `{quantity}`: {reason}")]
pub struct QuantityError {
    /// The text as given.
    pub quantity: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// CPU in millicores: `"250m"` → 250, `"2"` → 2000, `"0.5"` → 500, `"100n"` → 1 (rounded up).
pub fn cpu_millis(q: &str) -> Result<u64, QuantityError> {
    scaled(q, 3)
}

/// Memory in bytes: `"512Mi"` → 536870912, `"1G"` → 10^9, `"1.5Gi"` → 1610612736.
pub fn memory_bytes(q: &str) -> Result<u64, QuantityError> {
    scaled(q, 0)
}

/// The quantity times 10^`pow10`, rounded up to an integer.
fn scaled(q: &str, pow10: i32) -> Result<u64, QuantityError> {
    let err = |reason| QuantityError {
        quantity: q.to_string(),
        reason,
    };
    let s = q.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.starts_with('-') {
        return Err(err("negative quantities are not resource amounts"));
    }
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(err("no number"));
    }
    if frac_part.contains('.') {
        return Err(err("more than one decimal point"));
    }
    // Digits beyond what u128 holds carry no meaning for resource amounts.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(err("too many digits"));
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| err("not a number"))?
    };
    let frac_digits = i32::try_from(frac_part.len()).map_err(|_| err("too many digits"))?;

    let (binary_shift, exp10): (u32, i32) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        other => {
            // Decimal exponent form: `1e3`, `5E-2`.
            let rest = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or_else(|| err("unknown suffix"))?;
            let e: i32 = rest.parse().map_err(|_| err("bad exponent"))?;
            if !(-64..=64).contains(&e) {
                return Err(err("exponent out of range"));
            }
            (0, e)
        }
    };

    let too_big = || err("too large");
    let value = mantissa
        .checked_mul(1u128 << binary_shift)
        .ok_or_else(too_big)?;
    let exp = exp10 + pow10 - frac_digits;
    let result = if exp >= 0 {
        let factor = 10u128.checked_pow(exp as u32).ok_or_else(too_big)?;
        value.checked_mul(factor).ok_or_else(too_big)?
    } else {
        match 10u128.checked_pow((-exp) as u32) {
            // Rounded up, as Kubernetes does.
            Some(divisor) => value.div_ceil(divisor),
            // A divisor beyond u128: any non-zero amount is smaller than one unit.
            None => u128::from(value > 0),
        }
    };
    u64::try_from(result).map_err(|_| too_big())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities_become_millicores() {
        assert_eq!(cpu_millis("250m"), Ok(250));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert_eq!(cpu_millis(".5"), Ok(500));
        assert_eq!(cpu_millis("1.25"), Ok(1250));
        assert_eq!(cpu_millis("100n"), Ok(1));
        assert_eq!(cpu_millis("1500000000n"), Ok(1500));
        assert_eq!(cpu_millis("250000u"), Ok(250));
        assert_eq!(cpu_millis("0"), Ok(0));
        assert_eq!(cpu_millis("1e3"), Ok(1_000_000));
        assert_eq!(cpu_millis("+1"), Ok(1000));
    }

    #[test]
    fn memory_quantities_become_bytes() {
        assert_eq!(memory_bytes("512Mi"), Ok(512 * 1024 * 1024));
        assert_eq!(memory_bytes("2Gi"), Ok(2 * 1024 * 1024 * 1024));
        assert_eq!(memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("128974848"), Ok(128_974_848));
        assert_eq!(memory_bytes("129e6"), Ok(129_000_000));
        assert_eq!(memory_bytes("123Ki"), Ok(123 * 1024));
        assert_eq!(memory_bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(memory_bytes("1k"), Ok(1000));
        assert_eq!(memory_bytes("1Ti"), Ok(1 << 40));
        assert_eq!(memory_bytes("1E"), Ok(1_000_000_000_000_000_000));
        // Fractions of a byte round up.
        assert_eq!(memory_bytes("1500m"), Ok(2));
    }

    #[test]
    fn bad_quantities_are_errors() {
        for q in ["", "Mi", "abc", "1.2.3", "-1", "1Xi", "1e", "1ee3", "2 Gi"] {
            assert!(memory_bytes(q).is_err(), "{q} should be rejected");
        }
        assert!(memory_bytes("100Ei").is_err(), "overflows u64");
    }
}
