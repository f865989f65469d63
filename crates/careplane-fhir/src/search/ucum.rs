//! Canonical UCUM units for quantity search, so `5400 mg` is found by `5.4|…|g` and
//! `180 mg/dL` by `1.8|…|g/L`.
//!
//! A deliberately small, explicit table and grammar rather than a UCUM implementation: the
//! Rust UCUM crates are either unmaintained (`ucum` 0.1, 2020) or young single releases with
//! large vendored tables (`ucum-units`, `octofhir-ucum-core`), and they convert with
//! floating-point factors (`mg` = 0.001 g), which puts noise on exactly the boundaries
//! quantity search compares (`gt0.009|…|g` must not match `9 mg`, but `9 * 0.001` is
//! `0.009000000000000001`).
//!
//! Exactness: every code scales to its canonical unit by an exact integer ratio, and
//! [`UcumUnit::to_canonical`] applies it to the value's shortest decimal form (the number as
//! written, up to 15 significant digits) in integer arithmetic, rounding once when the result
//! is read back as an `f64`. So `0.9 mg/dL` becomes exactly the `f64` of `0.009` g/L, where
//! `0.9 / 100.0` would be `0.009000000000000001` (exact integer factors in `f64` arithmetic miss
//! like this for many decimals, multiplying too: `16.1 * 1000.0` is `16100.000000000002`).
//! Results that are not finite decimals (`70 /min` is
//! 1.1666… s-1, `km/h` is 5/18 m/s) are rounded from 40 significant digits, so ratios whose
//! numerator and denominator both differ from 1 convert as exactly as the others. The
//! conversion keeps the order of values.
//!
//! Grammar: components joined by `.` (times) and `/` (per), read left to right, with a leading
//! `/` for "per" (`/min`). A component is a unit of the table with an optional integer
//! exponent (`m2`, `s-1`), a power of ten (`10*3`, `10^-3`) or a positive integer, optionally
//! followed by an annotation (`{cells}/uL`, `mg{total}`), or an annotation alone. Annotations
//! are ignored: UCUM gives them the value 1, so `{cells}/uL` is `/uL` and `5000 {cells}/uL` is
//! `5 10*3/uL`. Anything else is not converted and is searched with the code as written:
//! other units (`mmol/L`, `mm[Hg]`, `Cel`, `%`), parentheses, and `.` after a `/` (`mg/kg.d`:
//! UCUM reads `(mg/kg).d`, writers often mean `mg/(kg.d)`).
//!
//! Canonical codes list the dimensions in the order `g` (mass), `m` (length), `L` (volume),
//! `s` (time), joined by `.`, each with its exponent unless 1: `g.L-1` for `mg/dL`, `L-1` for
//! `10*3/uL` and `10*9/L`, `m.s-1` for `km/h`, `g.m-2` for `kg/m2`. Volume stays `L`, so `m3`
//! and `L` do not meet. Also not converted:
//! - a dimension both above and below the line (`mg/kg`, `mg/kg/d`, `g/g`): cancelling it would
//!   make a dose per body weight per day an `s-1` like a heart rate, and mass and volume
//!   fractions the same dimensionless number;
//! - codes left without a dimension (`10*3`, `{score}`, `1`), for the same reason;
//! - ratios beyond `u64` (`10*20/L`, `km7`);
//! - months and years: UCUM's `mo` and `a` are mean Julian lengths, not calendar ones.

/// `Quantity.system` of UCUM codes.
pub const UCUM_SYSTEM: &str = "http://unitsofmeasure.org";

/// A UCUM code the conversion understands, as its canonical unit and the exact ratio to it.
#[derive(Debug, Clone, PartialEq)]
pub struct UcumUnit {
    /// The canonical unit's code: `g` for `mg`, `g.L-1` for `mg/dL`.
    pub canonical: String,
    /// A value times `num / den` (a reduced ratio) is the value in the canonical unit.
    num: u64,
    den: u64,
}

/// The canonical unit of each dimension, in the order canonical codes list them.
const DIMENSIONS: [&str; 4] = ["g", "m", "L", "s"];
const MASS: usize = 0;
const LENGTH: usize = 1;
const VOLUME: usize = 2;
const TIME: usize = 3;

/// A unit of the table: one dimension, scaled by an integer multiplier or divisor.
#[derive(Clone, Copy)]
struct TableUnit {
    dimension: usize,
    num: u64,
    den: u64,
}

const fn times(dimension: usize, num: u64) -> TableUnit {
    TableUnit {
        dimension,
        num,
        den: 1,
    }
}

const fn per(dimension: usize, den: u64) -> TableUnit {
    TableUnit {
        dimension,
        num: 1,
        den,
    }
}

/// UCUM codes are case-sensitive; `L` and `l` are both the litre.
const UNITS: &[(&str, TableUnit)] = &[
    ("kg", times(MASS, 1_000)),
    ("g", times(MASS, 1)),
    ("mg", per(MASS, 1_000)),
    ("ug", per(MASS, 1_000_000)),
    ("ng", per(MASS, 1_000_000_000)),
    ("km", times(LENGTH, 1_000)),
    ("m", times(LENGTH, 1)),
    ("cm", per(LENGTH, 100)),
    ("mm", per(LENGTH, 1_000)),
    ("um", per(LENGTH, 1_000_000)),
    ("L", times(VOLUME, 1)),
    ("l", times(VOLUME, 1)),
    ("dL", per(VOLUME, 10)),
    ("dl", per(VOLUME, 10)),
    ("mL", per(VOLUME, 1_000)),
    ("ml", per(VOLUME, 1_000)),
    ("uL", per(VOLUME, 1_000_000)),
    ("ul", per(VOLUME, 1_000_000)),
    ("ms", per(TIME, 1_000)),
    ("s", times(TIME, 1)),
    ("min", times(TIME, 60)),
    ("h", times(TIME, 3_600)),
    ("d", times(TIME, 86_400)),
    ("wk", times(TIME, 604_800)),
];

/// Significant digits kept of a quotient that is not a finite decimal: far more than the 17
/// an `f64` needs, so the one rounding to `f64` only differs from rounding the exact quotient
/// when that lies within 1e-40 (relative) of a midpoint between two `f64`s.
const QUOTIENT_DIGITS: usize = 40;

impl UcumUnit {
    /// The canonical unit and ratio of a UCUM `code`, if the grammar and table cover it.
    pub fn lookup(code: &str) -> Option<UcumUnit> {
        let mut product = Product::ONE;
        for (divides, component) in components(code)? {
            product.apply(component, divides)?;
        }
        product.into_unit()
    }

    /// `value` in the canonical unit; `None` when it would overflow (a search value is then
    /// refused, an index value just gets no canonical row).
    pub fn to_canonical(&self, value: f64) -> Option<f64> {
        if !value.is_finite() {
            return None;
        }
        let (negative, digits, exponent) = shortest_decimal(value)?;
        let scaled = u128::from(digits).checked_mul(u128::from(self.num))?;
        let (quotient, fraction_digits) = decimal_quotient(scaled, self.den)?;
        let sign = if negative { "-" } else { "" };
        let exponent = i64::from(exponent) - i64::from(fraction_digits);
        // Rust's float parsing rounds correctly: the one rounding of the conversion.
        let converted: f64 = format!("{sign}{quotient}e{exponent}").parse().ok()?;
        converted.is_finite().then_some(converted)
    }
}

/// The convertible unit of a quantity, only when its system is UCUM: a bare `mg` without a
/// system is a label, not a UCUM code.
pub fn ucum_unit(system: Option<&str>, code: Option<&str>) -> Option<UcumUnit> {
    match (system, code) {
        (Some(UCUM_SYSTEM), Some(code)) => UcumUnit::lookup(code),
        _ => None,
    }
}

/// The components of `code`, each with whether it divides (follows a `/`); annotations stay
/// whole. `None` for unbalanced braces and for `.` after a `/` (see the module doc).
fn components(code: &str) -> Option<Vec<(bool, &str)>> {
    let (mut divides, body) = match code.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, code),
    };
    let mut divided = divides;
    let mut out = Vec::new();
    let (mut start, mut in_annotation) = (0, false);
    for (i, c) in body.char_indices() {
        match c {
            '{' if !in_annotation => in_annotation = true,
            '}' if in_annotation => in_annotation = false,
            '{' | '}' => return None,
            '.' | '/' if !in_annotation => {
                if c == '.' && divided {
                    return None;
                }
                out.push((divides, &body[start..i]));
                divides = c == '/';
                divided |= divides;
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_annotation {
        return None;
    }
    out.push((divides, &body[start..]));
    Some(out)
}

/// A code's ratio and dimensions while it is read.
struct Product {
    num: u128,
    den: u128,
    /// Per dimension, the exponents above and below the line, kept apart to see whether a
    /// dimension cancels.
    above: [u32; 4],
    below: [u32; 4],
}

impl Product {
    const ONE: Product = Product {
        num: 1,
        den: 1,
        above: [0; 4],
        below: [0; 4],
    };

    /// Reads one component into the product; `None` if it is outside the grammar or table.
    fn apply(&mut self, component: &str, divides: bool) -> Option<()> {
        let (unit, annotated) = split_annotation(component)?;
        if unit.is_empty() {
            // An annotation alone is 1; an empty component (`mg//L`, `mg/`) is an error.
            return annotated.then_some(());
        }
        let direction = if divides { -1 } else { 1 };
        if let Some(power) = unit
            .strip_prefix("10*")
            .or_else(|| unit.strip_prefix("10^"))
        {
            let power = power.parse::<i32>().ok()?.checked_mul(direction)?;
            let factor = 10u128.checked_pow(power.unsigned_abs())?;
            return self.scale_by(factor, power >= 0);
        }
        if unit.bytes().all(|b| b.is_ascii_digit()) {
            let factor = unit.parse::<u128>().ok().filter(|f| *f > 0)?;
            return self.scale_by(factor, !divides);
        }
        let (symbol, exponent) = split_exponent(unit)?;
        let (_, table_unit) = UNITS.iter().find(|(s, _)| *s == symbol)?;
        self.raise(*table_unit, exponent.checked_mul(direction)?)
    }

    /// Multiplies the ratio by `table_unit` to the power `exponent` (not 0).
    fn raise(&mut self, table_unit: TableUnit, exponent: i32) -> Option<()> {
        let power = exponent.unsigned_abs();
        let num = u128::from(table_unit.num).checked_pow(power)?;
        let den = u128::from(table_unit.den).checked_pow(power)?;
        let side = if exponent > 0 {
            &mut self.above
        } else {
            &mut self.below
        };
        side[table_unit.dimension] = side[table_unit.dimension].checked_add(power)?;
        if exponent > 0 {
            self.scale(num, den)
        } else {
            self.scale(den, num)
        }
    }

    /// Multiplies the ratio by `factor`, or divides it by `factor` unless `multiply`.
    fn scale_by(&mut self, factor: u128, multiply: bool) -> Option<()> {
        if multiply {
            self.scale(factor, 1)
        } else {
            self.scale(1, factor)
        }
    }

    fn scale(&mut self, num: u128, den: u128) -> Option<()> {
        let num = self.num.checked_mul(num)?;
        let den = self.den.checked_mul(den)?;
        let common = gcd(num, den);
        self.num = num / common;
        self.den = den / common;
        Some(())
    }

    fn into_unit(self) -> Option<UcumUnit> {
        let mut parts = Vec::new();
        for (dimension, symbol) in DIMENSIONS.iter().enumerate() {
            let exponent = match (self.above[dimension], self.below[dimension]) {
                (0, 0) => continue,
                (above, 0) => i64::from(above),
                (0, below) => -i64::from(below),
                // The dimension cancels (see the module doc).
                _ => return None,
            };
            parts.push(if exponent == 1 {
                (*symbol).to_string()
            } else {
                format!("{symbol}{exponent}")
            });
        }
        if parts.is_empty() {
            return None;
        }
        Some(UcumUnit {
            canonical: parts.join("."),
            num: u64::try_from(self.num).ok()?,
            den: u64::try_from(self.den).ok()?,
        })
    }
}

/// `component` without its trailing annotation (`mg{total}` → `mg`), and whether it had one.
/// `None` for anything else in braces.
fn split_annotation(component: &str) -> Option<(&str, bool)> {
    let Some((unit, rest)) = component.split_once('{') else {
        return Some((component, false));
    };
    let annotation = rest.strip_suffix('}')?;
    annotation
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '{' && c != '}')
        .then_some((unit, true))
}

/// A table symbol and its exponent: `m2` → (`m`, 2), `s-1` → (`s`, -1), `mg` → (`mg`, 1).
fn split_exponent(unit: &str) -> Option<(&str, i32)> {
    let digits_start = unit.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    if digits_start == unit.len() {
        return Some((unit, 1));
    }
    let symbol = unit[..digits_start]
        .strip_suffix(['+', '-'])
        .unwrap_or(&unit[..digits_start]);
    let exponent = unit[symbol.len()..].parse::<i32>().ok()?;
    (!symbol.is_empty() && exponent != 0).then_some((symbol, exponent))
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A finite `value` as the shortest decimal that reads back as it: sign, digits, power of
/// ten (`5400.0` → (false, 54, 2)).
fn shortest_decimal(value: f64) -> Option<(bool, u64, i32)> {
    // `{:e}` without a precision prints the shortest round-trip form, e.g. `5.4e3`.
    let text = format!("{value:e}");
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    let (mantissa, exponent) = unsigned.split_once('e')?;
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}").parse().ok()?;
    let exponent = exponent
        .parse::<i32>()
        .ok()?
        .checked_sub(i32::try_from(fraction.len()).ok()?)?;
    Some((negative, digits, exponent))
}

/// The decimal digits of `dividend / divisor` and how many of them are after the point: all
/// of them when the quotient is a finite decimal, else [`QUOTIENT_DIGITS`] significant ones
/// and a final `1` standing for the rest, so that a truncation never reads as an exact tie.
fn decimal_quotient(dividend: u128, divisor: u64) -> Option<(String, u32)> {
    let divisor = u128::from(divisor);
    let whole = dividend / divisor;
    let mut remainder = dividend % divisor;
    let mut digits = whole.to_string();
    let mut significant = if whole == 0 { 0 } else { digits.len() };
    let mut fraction_digits = 0;
    while remainder != 0 && significant < QUOTIENT_DIGITS {
        // remainder < divisor <= u64::MAX, so this cannot overflow a u128.
        remainder *= 10;
        let digit = u32::try_from(remainder / divisor).ok()?;
        remainder %= divisor;
        digits.push(char::from_digit(digit, 10)?);
        fraction_digits += 1;
        if significant > 0 || digit > 0 {
            significant += 1;
        }
    }
    if remainder != 0 {
        digits.push('1');
        fraction_digits += 1;
    }
    Some((digits, fraction_digits))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UCUM: Option<&str> = Some(UCUM_SYSTEM);

    fn canonical(value: f64, code: &str) -> (f64, String) {
        let unit = UcumUnit::lookup(code).unwrap_or_else(|| panic!("{code} converts"));
        (unit.to_canonical(value).unwrap(), unit.canonical)
    }

    fn converts(value: f64, code: &str, expected: f64, canonical_code: &str) {
        assert_eq!(
            canonical(value, code),
            (expected, canonical_code.to_string()),
            "{value} {code}"
        );
    }

    #[test]
    fn common_units_scale_to_their_canonical_unit() {
        converts(5400.0, "mg", 5.4, "g");
        converts(2.5, "kg", 2500.0, "g");
        converts(7.0, "ug", 0.000007, "g");
        converts(1.0, "ng", 1e-9, "g");
        converts(172.0, "cm", 1.72, "m");
        converts(3.0, "km", 3000.0, "m");
        converts(12.0, "mm", 0.012, "m");
        converts(250.0, "mL", 0.25, "L");
        converts(250.0, "ml", 0.25, "L");
        converts(4.0, "dL", 0.4, "L");
        converts(90.0, "min", 5400.0, "s");
        converts(2.0, "h", 7200.0, "s");
        converts(1.0, "d", 86400.0, "s");
        converts(1.0, "wk", 604800.0, "s");
        converts(1500.0, "ms", 1.5, "s");
        converts(5.4, "g", 5.4, "g");
        converts(-2.5, "kg", -2500.0, "g");
        converts(0.0, "mg", 0.0, "g");
    }

    #[test]
    fn compound_units_scale_to_a_canonical_product() {
        converts(180.0, "mg/dL", 1.8, "g.L-1");
        converts(1.8, "g/L", 1.8, "g.L-1");
        converts(14.2, "g/dL", 142.0, "g.L-1");
        converts(3.5, "mg/L", 0.0035, "g.L-1");
        converts(5.0, "ug/mL", 0.005, "g.L-1");
        converts(22.5, "kg/m2", 22500.0, "g.m-2");
        converts(22.5, "kg.m-2", 22500.0, "g.m-2");
        converts(120.0, "mL/min", 0.002, "L.s-1");
        converts(90.0, "/min", 1.5, "s-1");
        converts(90.0, "1/min", 1.5, "s-1");
        converts(1.5, "s-1", 1.5, "s-1");
        converts(36.0, "km/h", 10.0, "m.s-1");
        converts(10.0, "m/s", 10.0, "m.s-1");
        converts(10_000.0, "cm2", 1.0, "m2");
        converts(2.0, "m3", 2.0, "m3");
        converts(1.0, "m+2", 1.0, "m2");
        converts(1.0, "10*3/uL", 1e9, "L-1");
        converts(1.0, "10*9/L", 1e9, "L-1");
        converts(1.0, "10^9/L", 1e9, "L-1");
        converts(4.5, "10*12/L", 4.5e12, "L-1");
        converts(1.0, "10*-3.g", 0.001, "g");
        // Dimensions are listed in a fixed order, whatever the order written.
        converts(35.0, "mL/kg", 35.0 / 1e6, "g-1.L");
        assert_eq!(UcumUnit::lookup("s-1.m"), UcumUnit::lookup("m/s"));
        assert_eq!(UcumUnit::lookup("mg/dL"), UcumUnit::lookup("10*-2.g/L"));
    }

    #[test]
    fn annotations_count_as_one() {
        converts(5400.0, "mg{total}", 5.4, "g");
        converts(5000.0, "{cells}/uL", 5e9, "L-1");
        converts(5.0, "10*3{cells}/uL", 5e9, "L-1");
        converts(60.0, "{beats}/min", 1.0, "s-1");
        // An annotation may hold the operators and digits it likes.
        converts(1.0, "g{a.b/c2}/L", 1.0, "g.L-1");
    }

    #[test]
    fn equal_quantities_meet_in_the_canonical_unit() {
        let same = |a: (f64, &str), b: (f64, &str)| {
            assert_eq!(canonical(a.0, a.1), canonical(b.0, b.1), "{a:?} {b:?}");
        };
        same((180.0, "mg/dL"), (1.8, "g/L"));
        same((1.0, "10*3/uL"), (1.0, "10*9/L"));
        same((7.2, "10*3/uL"), (7200.0, "/uL"));
        same((60.0, "/min"), (1.0, "/s"));
        same((3.6, "km/h"), (1.0, "m/s"));
        same((250.0, "ug/mL"), (0.25, "mg/mL"));
    }

    #[test]
    fn boundaries_stay_exact() {
        // The reason for exact ratios applied to the decimal: 9 * 0.001 is
        // 0.009000000000000001 in f64, which would make `gt0.009|…|g` match 9 mg, and even an
        // exact divisor misses for some decimals.
        assert_ne!(0.9 / 100.0, 0.009);
        assert_ne!(16.1 * 1000.0, 16100.0);
        assert_ne!(0.36 * 5.0 / 18.0, 0.1);
        assert_eq!(canonical(9.0, "mg").0, 0.009);
        assert_eq!(canonical(5000.0, "mg").0, 5.0);
        assert_eq!(canonical(100.0, "cm").0, 1.0);
        assert_eq!(canonical(1000.0, "mL").0, 1.0);
        assert_eq!(canonical(16.1, "kg").0, 16100.0);
        assert_eq!(canonical(0.9, "cm").0, 0.009);
        assert_eq!(canonical(9.0, "mg/dL").0, 0.09);
        assert_eq!(canonical(0.9, "mg/dL").0, 0.009);
        assert_eq!(canonical(0.7, "g/dL").0, 7.0);
        assert_eq!(canonical(0.1, "ug/L").0, 1e-7);
        assert_eq!(canonical(3.6, "km/h").0, 1.0);
        assert_eq!(canonical(0.36, "km/h").0, 0.1);
        // Order is kept: a value just below a bound stays below it after conversion.
        let (below, bound) = (canonical(5399.5, "mg").0, canonical(5399.6, "mg").0);
        assert!(below < bound);
        let (below, bound) = (canonical(70.0, "/min").0, canonical(70.000001, "/min").0);
        assert!(below < bound);
    }

    #[test]
    fn quotients_that_are_not_finite_decimals_round_once() {
        // 70, 60, 5 and 18 are exact in f64, so one f64 division is the correctly rounded
        // quotient.
        assert_eq!(canonical(70.0, "/min").0, 70.0 / 60.0);
        assert_eq!(canonical(1.0, "km/h").0, 5.0 / 18.0);
        assert_eq!(canonical(1.0, "/h").0, 1.0 / 3600.0);
        assert_eq!(canonical(-7.0, "m/min").0, -7.0 / 60.0);
    }

    #[test]
    fn only_ucum_codes_the_grammar_and_table_cover_convert() {
        assert!(ucum_unit(UCUM, Some("mg")).is_some());
        assert!(ucum_unit(UCUM, Some("mg/dL")).is_some());
        assert!(ucum_unit(None, Some("mg")).is_none(), "no system: a label");
        assert!(
            ucum_unit(None, Some("mg/dL")).is_none(),
            "no system: a label"
        );
        assert!(ucum_unit(Some("http://other"), Some("mg")).is_none());
        assert!(ucum_unit(UCUM, None).is_none());
        for code in [
            // Outside the table.
            "mm[Hg]", "Cel", "mmol/L", "%", "[iU]/L", "Mg", // Not fixed lengths.
            "a", "mo", "/a", // Case-sensitive.
            "MG", "mg/DL", "/MIN", "KM/H", // A dimension that cancels, or none at all.
            "g/g", "mg/kg", "mg/kg/d", "m2/m", "10*3", "{score}", "1",
            // Outside the grammar.
            "", "/", ".mg", "mg/", "mg//dL", "mg..L", "mg/kg.d", "(mg)/dL", "mg dL", "mg{", "mg}",
            "mg{a{b}}", "mg{a}L", "m0", "m-", "10*", "10*x", "0/min", "10*3/uL ",
        ] {
            assert_eq!(UcumUnit::lookup(code), None, "{code:?}");
        }
    }

    #[test]
    fn overflow_is_refused_not_infinite() {
        assert_eq!(UcumUnit::lookup("wk").unwrap().to_canonical(1e307), None);
        for code in [
            "10*20/L",
            "km7",
            "10*39/L",
            "10*3.10*3.10*3.10*3.10*3.10*3.10*3.10*3.10*3.10*3.10*3.10*3.10*3.10*3/L",
            "m99999999999",
            "ng99/L",
        ] {
            assert_eq!(UcumUnit::lookup(code), None, "{code}");
        }
        assert!(UcumUnit::lookup("km6").is_some(), "1e18 fits");
    }
}
