//! CPU and memory quantities as written in Quadlet files: cpu `"1"`, `"0.5"`, `"250m"`;
//! memory `"64Mi"`, `"1Gi"`, `"1.5Gi"` or plain bytes. The proto keeps the text as
//! written; these functions give the numbers the scheduler and the runtime use.

/// Why a quantity was refused; `Display` is the whole user-facing reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a {kind} quantity: {why} (use e.g. {example})")]
pub struct QuantityError {
    text: String,
    kind: &'static str,
    why: String,
    example: &'static str,
}

const CPU_EXAMPLE: &str = "1, 0.5 or 250m";
const MEMORY_EXAMPLE: &str = "64Mi, 1Gi or 1048576";

/// Parses a CPU quantity into millicores.
pub fn parse_cpu_millis(text: &str) -> Result<u64, QuantityError> {
    let fail = |why: &str| QuantityError {
        text: text.to_owned(),
        kind: "CPU",
        why: why.to_owned(),
        example: CPU_EXAMPLE,
    };
    if let Some(millis) = text.strip_suffix('m') {
        if millis.is_empty() || !millis.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail("millicores must be a whole number before the m"));
        }
        return millis.parse::<u64>().map_err(|_| fail("too large"));
    }
    let (whole, frac) = split_decimal(text).ok_or_else(|| fail("not a number"))?;
    if frac.len() > 3 {
        return Err(fail("finer than 1m (0.001 of a core)"));
    }
    let frac_millis = format!("{frac:0<3}")
        .parse::<u64>()
        .map_err(|_| fail("not a number"))?;
    whole
        .parse::<u64>()
        .ok()
        .and_then(|w| w.checked_mul(1000))
        .and_then(|w| w.checked_add(frac_millis))
        .ok_or_else(|| fail("too large"))
}

/// Parses a memory quantity into bytes.
pub fn parse_memory_bytes(text: &str) -> Result<u64, QuantityError> {
    let fail = |why: String| QuantityError {
        text: text.to_owned(),
        kind: "memory",
        why,
        example: MEMORY_EXAMPLE,
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let shift = match suffix {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        "Ti" => 40,
        "K" | "k" | "M" | "G" | "T" => {
            return Err(fail(format!(
                "decimal suffixes are not supported; did you mean {number}{}i?",
                suffix.to_ascii_uppercase()
            )));
        }
        "m" => return Err(fail("memory cannot be given in millibytes".to_owned())),
        other => {
            return Err(fail(format!(
                "unknown unit {other:?}; units are Ki, Mi, Gi, Ti"
            )));
        }
    };
    let (whole, frac) = split_decimal(number).ok_or_else(|| fail("not a number".to_owned()))?;
    let whole: u64 = whole.parse().map_err(|_| fail("too large".to_owned()))?;
    let whole_bytes = whole.checked_shl(shift).filter(|v| v >> shift == whole);
    let whole_bytes = whole_bytes.ok_or_else(|| fail("too large".to_owned()))?;
    if frac.is_empty() {
        return Ok(whole_bytes);
    }
    if frac.len() > 9 {
        return Err(fail("too many decimals".to_owned()));
    }
    // value = frac / 10^len * 2^shift, which must come out in whole bytes.
    let denominator = 10u128.pow(u32::try_from(frac.len()).unwrap_or(9));
    let numerator = frac
        .parse::<u128>()
        .map_err(|_| fail("not a number".to_owned()))?
        << shift;
    if numerator % denominator != 0 {
        return Err(fail("is not a whole number of bytes".to_owned()));
    }
    u64::try_from(numerator / denominator)
        .ok()
        .and_then(|f| whole_bytes.checked_add(f))
        .ok_or_else(|| fail("too large".to_owned()))
}

/// Splits `"12.5"` into `("12", "5")`; `None` unless it is digits with at most one dot.
fn split_decimal(text: &str) -> Option<(&str, &str)> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let ok = !whole.is_empty() && digits(whole) && digits(frac) && !(text.ends_with('.'));
    ok.then_some((whole, frac))
}

/// Parses a duration such as `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with s, m, h or d, e.g. 24h"))?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use s, m, h or d)"
            ));
        }
    };
    n.checked_mul(factor)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("{text:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        for (text, millis) in [
            ("1", 1000),
            ("0.5", 500),
            ("250m", 250),
            ("1.5", 1500),
            ("0", 0),
        ] {
            assert_eq!(parse_cpu_millis(text), Ok(millis), "{text}");
        }
    }

    #[test]
    fn bad_cpu_quantities_say_why() {
        for (text, why) in [
            ("", "not a number"),
            ("-1", "not a number"),
            ("1.2345", "finer than 1m"),
            ("250mm", "millicores must be a whole number"),
            ("1.5m", "millicores must be a whole number"),
            ("64Mi", "not a number"),
            ("twelve", "not a number"),
            ("99999999999999999999", "too large"),
        ] {
            let err = parse_cpu_millis(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
            assert!(err.contains("use e.g. 1, 0.5 or 250m"), "{err}");
        }
    }

    #[test]
    fn memory_quantities() {
        for (text, bytes) in [
            ("64Mi", 64 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("1048576", 1_048_576),
            ("2Ti", 2 << 40),
            ("512Ki", 512 << 10),
        ] {
            assert_eq!(parse_memory_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_memory_quantities_say_why() {
        for (text, why) in [
            ("250m", "millibytes"),
            ("1.5", "whole number of bytes"),
            ("64M", "did you mean 64Mi?"),
            ("12 parsecs", "unknown unit"),
            ("Gi", "not a number"),
            ("1.Gi", "not a number"),
            ("99999999999Ti", "too large"),
        ] {
            let err = parse_memory_bytes(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }
}
