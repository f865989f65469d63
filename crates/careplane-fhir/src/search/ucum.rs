//! Canonical UCUM units for quantity search, so `5400 mg` is found by `5.4|…|g`.
//!
//! A deliberately small, explicit table rather than a UCUM implementation: the Rust UCUM
//! crates are either unmaintained (`ucum` 0.1, 2020) or young single releases with large
//! vendored tables (`ucum-units`, `octofhir-ucum-core`), and they convert with floating-point
//! factors (`mg` = 0.001 g), which puts noise on exactly the boundaries quantity search
//! compares (`gt0.009|…|g` must not match `9 mg`, but `9 * 0.001` is `0.009000000000000001`). Here every unit scales to its dimension's
//! canonical unit by multiplying or dividing by an exact integer, so each conversion rounds
//! once and keeps the order of values. Units not in the table (`mg/dL`, `mm[Hg]`, `Cel`,
//! `/min`, …) are not converted: they are searched with the code as written.
//!
//! Canonical units: `g` (mass), `m` (length), `L` (volume), `s` (time). Months and years are
//! left out on purpose: UCUM's `mo` and `a` are mean Julian lengths, not calendar ones.

/// `Quantity.system` of UCUM codes.
pub const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";

/// A unit of the table and how it scales to its canonical unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UcumUnit {
    /// The canonical unit's code (`g` for `mg`).
    pub canonical: &'static str,
    /// `value * mul / div` is the value in the canonical unit; one of the two is 1, both are
    /// integers, so the conversion rounds once.
    mul: f64,
    div: f64,
}

const fn times(canonical: &'static str, mul: f64) -> UcumUnit {
    UcumUnit {
        canonical,
        mul,
        div: 1.0,
    }
}

const fn per(canonical: &'static str, div: f64) -> UcumUnit {
    UcumUnit {
        canonical,
        mul: 1.0,
        div,
    }
}

/// UCUM codes are case-sensitive; `L` and `l` are both the litre.
const UNITS: &[(&str, UcumUnit)] = &[
    // Mass.
    ("kg", times("g", 1_000.0)),
    ("g", times("g", 1.0)),
    ("mg", per("g", 1_000.0)),
    ("ug", per("g", 1_000_000.0)),
    ("ng", per("g", 1_000_000_000.0)),
    // Length.
    ("km", times("m", 1_000.0)),
    ("m", times("m", 1.0)),
    ("cm", per("m", 100.0)),
    ("mm", per("m", 1_000.0)),
    ("um", per("m", 1_000_000.0)),
    // Volume.
    ("L", times("L", 1.0)),
    ("l", times("L", 1.0)),
    ("dL", per("L", 10.0)),
    ("dl", per("L", 10.0)),
    ("mL", per("L", 1_000.0)),
    ("ml", per("L", 1_000.0)),
    ("uL", per("L", 1_000_000.0)),
    ("ul", per("L", 1_000_000.0)),
    // Time.
    ("ms", per("s", 1_000.0)),
    ("s", times("s", 1.0)),
    ("min", times("s", 60.0)),
    ("h", times("s", 3_600.0)),
    ("d", times("s", 86_400.0)),
    ("wk", times("s", 604_800.0)),
];

impl UcumUnit {
    /// The table entry for a UCUM `code`, if it has one.
    pub fn lookup(code: &str) -> Option<UcumUnit> {
        UNITS.iter().find(|(c, _)| *c == code).map(|(_, u)| *u)
    }

    /// `value` in the canonical unit; `None` when it would overflow (a search value is then
    /// refused, an index value just gets no canonical row).
    pub fn to_canonical(&self, value: f64) -> Option<f64> {
        let converted = value * self.mul / self.div;
        converted.is_finite().then_some(converted)
    }
}

/// The table unit of a quantity, only when its system is UCUM: a bare `mg` without a system
/// is a label, not a UCUM code.
pub fn ucum_unit(system: Option<&str>, code: Option<&str>) -> Option<UcumUnit> {
    match (system, code) {
        (Some(UCUM_SYSTEM), Some(code)) => UcumUnit::lookup(code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(value: f64, code: &str) -> (f64, &'static str) {
        let unit = UcumUnit::lookup(code).unwrap();
        (unit.to_canonical(value).unwrap(), unit.canonical)
    }

    #[test]
    fn common_units_scale_to_their_canonical_unit() {
        assert_eq!(canonical(5400.0, "mg"), (5.4, "g"));
        assert_eq!(canonical(2.5, "kg"), (2500.0, "g"));
        assert_eq!(canonical(7.0, "ug"), (0.000007, "g"));
        assert_eq!(canonical(1.0, "ng"), (1e-9, "g"));
        assert_eq!(canonical(172.0, "cm"), (1.72, "m"));
        assert_eq!(canonical(3.0, "km"), (3000.0, "m"));
        assert_eq!(canonical(12.0, "mm"), (0.012, "m"));
        assert_eq!(canonical(250.0, "mL"), (0.25, "L"));
        assert_eq!(canonical(250.0, "ml"), (0.25, "L"));
        assert_eq!(canonical(4.0, "dL"), (0.4, "L"));
        assert_eq!(canonical(90.0, "min"), (5400.0, "s"));
        assert_eq!(canonical(2.0, "h"), (7200.0, "s"));
        assert_eq!(canonical(1.0, "d"), (86400.0, "s"));
        assert_eq!(canonical(1.0, "wk"), (604800.0, "s"));
        assert_eq!(canonical(1500.0, "ms"), (1.5, "s"));
        assert_eq!(canonical(5.4, "g"), (5.4, "g"));
    }

    #[test]
    fn boundaries_stay_exact() {
        // The reason for integer scales: 9 * 0.001 is 0.009000000000000001 in f64, which would
        // make `gt0.009|…|g` match 9 mg.
        assert_eq!(canonical(9.0, "mg").0, 0.009);
        assert_eq!(canonical(5000.0, "mg").0, 5.0);
        assert_eq!(canonical(100.0, "cm").0, 1.0);
        assert_eq!(canonical(1000.0, "mL").0, 1.0);
        // Order is kept: a value just below a bound stays below it after conversion.
        let (below, bound) = (canonical(5399.5, "mg").0, canonical(5399.6, "mg").0);
        assert!(below < bound);
    }

    #[test]
    fn only_ucum_codes_in_the_table_convert() {
        assert!(ucum_unit(Some(UCUM_SYSTEM), Some("mg")).is_some());
        assert!(ucum_unit(None, Some("mg")).is_none(), "no system: a label");
        assert!(ucum_unit(Some("http://other"), Some("mg")).is_none());
        assert!(ucum_unit(Some(UCUM_SYSTEM), Some("mg/dL")).is_none());
        assert!(ucum_unit(Some(UCUM_SYSTEM), Some("mm[Hg]")).is_none());
        assert!(
            ucum_unit(Some(UCUM_SYSTEM), Some("MG")).is_none(),
            "case-sensitive"
        );
        assert!(
            ucum_unit(Some(UCUM_SYSTEM), Some("a")).is_none(),
            "years are not exact"
        );
        assert!(ucum_unit(Some(UCUM_SYSTEM), None).is_none());
    }

    #[test]
    fn overflow_is_refused_not_infinite() {
        assert_eq!(UcumUnit::lookup("wk").unwrap().to_canonical(1e307), None);
    }
}
