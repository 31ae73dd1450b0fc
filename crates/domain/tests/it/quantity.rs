//! Quantities through the public API: canonical printing round-trips and
//! parsing agrees with plain integer arithmetic.

use hodei_domain::{CpuQuantity, MemoryQuantity};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn cpu_display_round_trips(millis in 0u64..=u64::MAX) {
        let q = CpuQuantity::from_millis(millis);
        prop_assert_eq!(CpuQuantity::parse(&q.to_string()), Ok(q));
    }

    #[test]
    fn memory_display_round_trips(bytes in 0u64..=u64::MAX) {
        let q = MemoryQuantity::from_bytes(bytes);
        prop_assert_eq!(MemoryQuantity::parse(&q.to_string()), Ok(q));
    }

    /// `I.F` cores, with up to three decimals, is `I * 1000 + F` (F padded
    /// to three digits) milli-cores; `I.F` with a suffix scales exactly.
    #[test]
    fn cpu_decimals_are_exact(int in 0u64..1_000_000, frac in "[0-9]{0,3}") {
        let text = if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") };
        let padded = format!("{frac:0<3}");
        let expected = int * 1000 + padded.parse::<u64>().unwrap_or(0);
        prop_assert_eq!(CpuQuantity::parse(&text).map(CpuQuantity::millis), Ok(expected));
        prop_assert_eq!(
            CpuQuantity::parse(&format!("{expected}m")).map(CpuQuantity::millis),
            Ok(expected)
        );
        prop_assert_eq!(
            CpuQuantity::parse(&format!("{text}e3")).map(CpuQuantity::millis),
            Ok(expected * 1000)
        );
    }

    #[test]
    fn memory_suffixes_are_exact(n in 0u64..(1 << 20), suffix in 0usize..7) {
        let binary = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][suffix];
        let decimal = ["", "k", "M", "G", "T", "P", "E"][suffix];
        let shift = 10 * suffix as u32;
        let expected_binary = u64::try_from(u128::from(n) << shift).ok();
        let expected_decimal = n.checked_mul(1000u64.pow(suffix as u32));
        let got_binary = MemoryQuantity::parse(&format!("{n}{binary}")).ok().map(MemoryQuantity::bytes);
        let got_decimal = MemoryQuantity::parse(&format!("{n}{decimal}")).ok().map(MemoryQuantity::bytes);
        prop_assert_eq!(got_binary, expected_binary);
        prop_assert_eq!(got_decimal, expected_decimal);
    }

    #[test]
    fn garbage_is_an_error_that_names_the_value(text in "[0-9.eEKMGTPiumnk+-]{0,8}") {
        if let Err(e) = MemoryQuantity::parse(&text) {
            prop_assert!(e.to_string().contains(&format!("{text:?}")), "{}", e);
        }
        if let Err(e) = CpuQuantity::parse(&text) {
            prop_assert!(e.to_string().contains(&format!("{text:?}")), "{}", e);
        }
    }
}
