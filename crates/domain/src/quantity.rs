//! Kubernetes resource quantities, parsed exactly.
//!
//! A quantity is a non-negative decimal number followed by an optional
//! suffix, as Kubernetes writes them:
//!
//! * binary: `Ki Mi Gi Ti Pi Ei` (powers of 1024);
//! * decimal: `n u m k M G T P E` (powers of 1000; `m` is a thousandth);
//! * exponent: `e` or `E` followed by a signed integer (`129e6`, `1e-3`).
//!
//! CPU is kept as an integer number of milli-cores ([`CpuQuantity`]) and
//! memory or storage as an integer number of bytes ([`MemoryQuantity`]).
//! Parsing uses integer arithmetic only, so `0.1` is exactly 100m and
//! `1.5Gi` exactly 1610612736 bytes. A value finer than the unit (`0.0001`
//! cpu, `0.5` bytes) is an error rather than being silently rounded.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a string is not a valid quantity. Every variant names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string was empty (or only whitespace).
    #[error("invalid {kind} quantity \"\": empty, expected a number such as {example}")]
    Empty {
        /// `cpu` or `memory`.
        kind: &'static str,
        /// An example of a valid value.
        example: &'static str,
    },
    /// The string is not `<number><suffix>`.
    #[error("invalid {kind} quantity {value:?}: {reason}")]
    Syntax {
        /// `cpu` or `memory`.
        kind: &'static str,
        /// The rejected string.
        value: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The value is finer than the smallest unit (1m cpu, 1 byte).
    #[error("invalid {kind} quantity {value:?}: finer than the smallest unit ({unit})")]
    TooFine {
        /// `cpu` or `memory`.
        kind: &'static str,
        /// The rejected string.
        value: String,
        /// The smallest unit (`1m` or `1 byte`).
        unit: &'static str,
    },
    /// The value does not fit in 64 bits of the unit.
    #[error("invalid {kind} quantity {value:?}: too large")]
    TooLarge {
        /// `cpu` or `memory`.
        kind: &'static str,
        /// The rejected string.
        value: String,
    },
}

/// An exact rational `mantissa * 10^pow10 * 2^pow2`, the parsed form of a
/// quantity before it is scaled to its unit.
struct Parsed {
    mantissa: u128,
    pow10: i64,
    pow2: u32,
}

fn syntax(kind: &'static str, value: &str, reason: impl Into<String>) -> QuantityError {
    QuantityError::Syntax {
        kind,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

const SUFFIX_HELP: &str =
    "expected one of Ki, Mi, Gi, Ti, Pi, Ei, n, u, m, k, M, G, T, P, E or an exponent such as e3";

fn parse_parts(
    kind: &'static str,
    example: &'static str,
    value: &str,
) -> Result<Parsed, QuantityError> {
    let s = value;
    if s.is_empty() {
        return Err(QuantityError::Empty { kind, example });
    }
    let rest = match s.strip_prefix('+') {
        Some(r) => r,
        None if s.starts_with('-') => {
            return Err(syntax(kind, value, "must not be negative"));
        }
        None => s,
    };
    // Number: digits with at most one '.', at least one digit.
    let num_len = rest
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.'))
        .map_or(rest.len(), |(i, _)| i);
    let (number, suffix) = rest.split_at(num_len);
    if !number.bytes().any(|b| b.is_ascii_digit()) {
        return Err(syntax(
            kind,
            value,
            format!("expected a number such as {example}"),
        ));
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => {
            if f.contains('.') {
                return Err(syntax(kind, value, "more than one decimal point"));
            }
            (i, f)
        }
        None => (number, ""),
    };
    // Trailing zeros of the fraction carry no value; dropping them keeps
    // the mantissa small.
    let frac_part = frac_part.trim_end_matches('0');
    let mut mantissa: u128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(b - b'0')))
            .ok_or_else(|| QuantityError::TooLarge {
                kind,
                value: value.to_owned(),
            })?;
    }
    let frac_digits = i64::try_from(frac_part.len()).unwrap_or(i64::MAX);
    let (pow10, pow2) = match suffix {
        "" => (0, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        _ => {
            let exp = suffix.strip_prefix(['e', 'E']).ok_or_else(|| {
                syntax(
                    kind,
                    value,
                    format!("unknown suffix {suffix:?}, {SUFFIX_HELP}"),
                )
            })?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax(
                    kind,
                    value,
                    format!("unknown suffix {suffix:?}, {SUFFIX_HELP}"),
                ));
            }
            // Anything beyond a few dozen is out of range either way; clamp
            // so the arithmetic below cannot overflow.
            let magnitude: i64 = digits.parse::<i64>().unwrap_or(i64::MAX).min(1_000);
            let exp = if exp.starts_with('-') {
                -magnitude
            } else {
                magnitude
            };
            (exp, 0)
        }
    };
    Ok(Parsed {
        mantissa,
        pow10: pow10 - frac_digits,
        pow2,
    })
}

/// Scales a parsed quantity to an integer count of `10^unit_pow10` units.
fn to_units(
    kind: &'static str,
    unit: &'static str,
    value: &str,
    parsed: Parsed,
    unit_pow10: i64,
) -> Result<u64, QuantityError> {
    let too_large = || QuantityError::TooLarge {
        kind,
        value: value.to_owned(),
    };
    if parsed.mantissa == 0 {
        return Ok(0);
    }
    let mut n = parsed
        .mantissa
        .checked_shl(parsed.pow2)
        .ok_or_else(too_large)?;
    if n >> parsed.pow2 != parsed.mantissa {
        return Err(too_large());
    }
    let pow10 = parsed.pow10 + unit_pow10;
    if pow10 >= 0 {
        for _ in 0..pow10 {
            n = n.checked_mul(10).ok_or_else(too_large)?;
        }
    } else {
        for _ in 0..(-pow10) {
            if !n.is_multiple_of(10) {
                return Err(QuantityError::TooFine {
                    kind,
                    value: value.to_owned(),
                    unit,
                });
            }
            n /= 10;
        }
    }
    u64::try_from(n).map_err(|_| too_large())
}

/// A CPU amount in milli-cores: `500m`, `1`, `1.5`, `0.1`, `2`.
///
/// Ordered by amount. Displays in canonical form (`1500m`, `2`), which
/// parses back to the same value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CpuQuantity(u64);

impl CpuQuantity {
    /// Zero cpu.
    pub const ZERO: CpuQuantity = CpuQuantity(0);

    /// Parses a Kubernetes cpu quantity exactly.
    ///
    /// # Errors
    /// [`QuantityError`], naming `value`, when it is empty, not a number
    /// with a known suffix, negative, finer than 1m or too large.
    pub fn parse(value: &str) -> Result<Self, QuantityError> {
        let parsed = parse_parts("cpu", "500m or 2", value)?;
        to_units("cpu", "1m", value, parsed, 3).map(CpuQuantity)
    }

    /// A quantity of `millis` milli-cores.
    pub const fn from_millis(millis: u64) -> Self {
        CpuQuantity(millis)
    }

    /// A quantity of whole cores; `None` if it does not fit.
    pub const fn from_cores(cores: u64) -> Option<Self> {
        match cores.checked_mul(1000) {
            Some(m) => Some(CpuQuantity(m)),
            None => None,
        }
    }

    /// The amount in milli-cores.
    pub const fn millis(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CpuQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}", self.0 / 1000)
        } else {
            write!(f, "{}m", self.0)
        }
    }
}

impl FromStr for CpuQuantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// An amount of memory or storage in bytes: `512Mi`, `2Gi`, `1G`,
/// `128974848`, `129e6`.
///
/// Ordered by amount. Displays in canonical form: the largest binary suffix
/// that divides it exactly, else the largest decimal one, else plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MemoryQuantity(u64);

impl MemoryQuantity {
    /// Zero bytes.
    pub const ZERO: MemoryQuantity = MemoryQuantity(0);

    /// Parses a Kubernetes memory (or storage) quantity exactly.
    ///
    /// # Errors
    /// [`QuantityError`], naming `value`, when it is empty, not a number
    /// with a known suffix, negative, a fraction of a byte or too large.
    pub fn parse(value: &str) -> Result<Self, QuantityError> {
        let parsed = parse_parts("memory", "512Mi or 2Gi", value)?;
        to_units("memory", "1 byte", value, parsed, 0).map(MemoryQuantity)
    }

    /// A quantity of `bytes` bytes.
    pub const fn from_bytes(bytes: u64) -> Self {
        MemoryQuantity(bytes)
    }

    /// The amount in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for MemoryQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const BINARY: [(&str, u32); 6] = [
            ("Ei", 60),
            ("Pi", 50),
            ("Ti", 40),
            ("Gi", 30),
            ("Mi", 20),
            ("Ki", 10),
        ];
        const DECIMAL: [(&str, u64); 6] = [
            ("E", 1_000_000_000_000_000_000),
            ("P", 1_000_000_000_000_000),
            ("T", 1_000_000_000_000),
            ("G", 1_000_000_000),
            ("M", 1_000_000),
            ("k", 1_000),
        ];
        if self.0 == 0 {
            return f.write_str("0");
        }
        for (suffix, shift) in BINARY {
            if self.0.trailing_zeros() >= shift {
                return write!(f, "{}{suffix}", self.0 >> shift);
            }
        }
        for (suffix, unit) in DECIMAL {
            if self.0.is_multiple_of(unit) {
                return write!(f, "{}{suffix}", self.0 / unit);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl FromStr for MemoryQuantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Serde support: quantities serialize as their canonical string and
/// deserialize from a string or a non-negative number (YAML `cpu: 1`).
macro_rules! quantity_serde {
    ($ty:ident, $expecting:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::parse(v).map_err(E::custom)
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$ty, E> {
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$ty, E> {
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                    fn visit_f64<E: de::Error>(self, v: f64) -> Result<$ty, E> {
                        // `Display` for f64 prints the shortest decimal that
                        // reads back as the same float: the literal as
                        // written for any value with up to 15 digits.
                        $ty::parse(&v.to_string()).map_err(E::custom)
                    }
                }
                deserializer.deserialize_any(V)
            }
        }
    };
}

quantity_serde!(CpuQuantity, "a cpu quantity such as \"500m\" or 2");
quantity_serde!(
    MemoryQuantity,
    "a memory quantity such as \"512Mi\" or \"2Gi\""
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check_cpu(input: &str, expected: Result<u64, &str>) {
        let got = CpuQuantity::parse(input)
            .map(CpuQuantity::millis)
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "cpu {input:?}");
    }

    fn check_mem(input: &str, expected: Result<u64, &str>) {
        let got = MemoryQuantity::parse(input)
            .map(MemoryQuantity::bytes)
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "memory {input:?}");
    }

    #[test]
    fn cpu_accepted() {
        check_cpu("500m", Ok(500));
        check_cpu("1", Ok(1000));
        check_cpu("1.5", Ok(1500));
        check_cpu("0.1", Ok(100));
        check_cpu("2", Ok(2000));
        check_cpu("0", Ok(0));
        check_cpu("+1", Ok(1000));
        check_cpu(".5", Ok(500));
        check_cpu("1.", Ok(1000));
        check_cpu("1e3", Ok(1_000_000));
        check_cpu("1E3", Ok(1_000_000));
        check_cpu("1e-3", Ok(1));
        check_cpu("1e+2", Ok(100_000));
        check_cpu("250000u", Ok(250));
        check_cpu("1000000n", Ok(1));
        check_cpu("1k", Ok(1_000_000));
        check_cpu("1.000000000000000000000000000000000000000000000", Ok(1000));
        check_cpu("0.0000000000000000000000000000000000000000001e43", Ok(1000));
        check_cpu("0e99999999999999999999999", Ok(0));
    }

    #[test]
    fn cpu_rejected() {
        check_cpu(
            "",
            Err("invalid cpu quantity \"\": empty, expected a number such as 500m or 2"),
        );
        check_cpu(
            "abc",
            Err("invalid cpu quantity \"abc\": expected a number such as 500m or 2"),
        );
        check_cpu(
            " 2",
            Err("invalid cpu quantity \" 2\": expected a number such as 500m or 2"),
        );
        check_cpu(
            "-1",
            Err("invalid cpu quantity \"-1\": must not be negative"),
        );
        check_cpu(
            "1.5.5",
            Err("invalid cpu quantity \"1.5.5\": more than one decimal point"),
        );
        check_cpu(
            "0.0001",
            Err("invalid cpu quantity \"0.0001\": finer than the smallest unit (1m)"),
        );
        check_cpu(
            "1m5",
            Err(&format!(
                "invalid cpu quantity \"1m5\": unknown suffix \"m5\", {SUFFIX_HELP}"
            )),
        );
        check_cpu(
            "1e",
            Err(&format!(
                "invalid cpu quantity \"1e\": unknown suffix \"e\", {SUFFIX_HELP}"
            )),
        );
        check_cpu(
            "99999999999999999999",
            Err("invalid cpu quantity \"99999999999999999999\": too large"),
        );
        check_cpu(
            "1e999999",
            Err("invalid cpu quantity \"1e999999\": too large"),
        );
        check_cpu(
            "1e-999999",
            Err("invalid cpu quantity \"1e-999999\": finer than the smallest unit (1m)"),
        );
    }

    #[test]
    fn memory_accepted() {
        check_mem("2Gi", Ok(2 << 30));
        check_mem("512Mi", Ok(512 << 20));
        check_mem("1G", Ok(1_000_000_000));
        check_mem("128974848", Ok(128_974_848));
        check_mem("129e6", Ok(129_000_000));
        check_mem("123Mi", Ok(123 << 20));
        check_mem("1.5Gi", Ok(3 << 29));
        check_mem("1Ki", Ok(1024));
        check_mem("1k", Ok(1000));
        check_mem("1Ei", Ok(1 << 60));
        check_mem("15Ei", Ok(15 << 60));
        check_mem("128974848000m", Ok(128_974_848));
        check_mem("0.5Ki", Ok(512));
    }

    #[test]
    fn memory_rejected() {
        check_mem(
            "",
            Err("invalid memory quantity \"\": empty, expected a number such as 512Mi or 2Gi"),
        );
        check_mem(
            "abc",
            Err("invalid memory quantity \"abc\": expected a number such as 512Mi or 2Gi"),
        );
        check_mem(
            "-1",
            Err("invalid memory quantity \"-1\": must not be negative"),
        );
        check_mem(
            "1.5.5",
            Err("invalid memory quantity \"1.5.5\": more than one decimal point"),
        );
        check_mem(
            "1Zi",
            Err(&format!(
                "invalid memory quantity \"1Zi\": unknown suffix \"Zi\", {SUFFIX_HELP}"
            )),
        );
        check_mem(
            "Gi",
            Err("invalid memory quantity \"Gi\": expected a number such as 512Mi or 2Gi"),
        );
        check_mem(
            "0.5",
            Err("invalid memory quantity \"0.5\": finer than the smallest unit (1 byte)"),
        );
        check_mem("16Ei", Err("invalid memory quantity \"16Ei\": too large"));
        check_mem(
            "1 Gi",
            Err(&format!(
                "invalid memory quantity \"1 Gi\": unknown suffix \" Gi\", {SUFFIX_HELP}"
            )),
        );
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for (input, shown) in [
            ("500m", "500m"),
            ("1", "1"),
            ("1.5", "1500m"),
            ("1e3", "1000"),
            ("0", "0"),
        ] {
            let q = CpuQuantity::parse(input).unwrap();
            assert_eq!(q.to_string(), shown);
            assert_eq!(CpuQuantity::parse(shown).unwrap(), q);
        }
        for (input, shown) in [
            ("2Gi", "2Gi"),
            ("1024Mi", "1Gi"),
            ("1G", "1G"),
            ("1000", "1k"),
            ("1536Mi", "1536Mi"),
            ("123", "123"),
            ("0", "0"),
            ("129e6", "129M"),
        ] {
            let q = MemoryQuantity::parse(input).unwrap();
            assert_eq!(q.to_string(), shown);
            assert_eq!(MemoryQuantity::parse(shown).unwrap(), q);
        }
    }

    #[test]
    fn compares_by_amount() {
        assert!(CpuQuantity::parse("500m").unwrap() < CpuQuantity::parse("1").unwrap());
        assert_eq!(
            CpuQuantity::parse("1000m").unwrap(),
            CpuQuantity::parse("1").unwrap()
        );
        assert!(MemoryQuantity::parse("1G").unwrap() < MemoryQuantity::parse("1Gi").unwrap());
        assert_eq!(
            MemoryQuantity::parse("1Ki").unwrap(),
            MemoryQuantity::parse("1024").unwrap()
        );
    }
}
