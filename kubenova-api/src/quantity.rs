//! Kubernetes resource quantities (`500m`, `4Gi`, `1e3`, `20`).
//!
//! [`Quantity`] mirrors `k8s.io/apimachinery/pkg/api/resource.Quantity`: it accepts the
//! same grammar, stores the exact value (in nano-units, rounded away from zero like
//! Kubernetes does) and renders the same canonical string that Kubernetes would show,
//! so a quota written as `1024Mi` is displayed as `1Gi` and `1000m` as `1`.
//!
//! Grammar (after Kubernetes):
//!
//! ```text
//! quantity        ::= sign? number suffix?
//! sign            ::= "+" | "-"
//! number          ::= digits ("." digits?)? | "." digits
//! suffix          ::= binarySI | decimalSI | decimalExponent
//! binarySI        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! decimalSI       ::= n | u | m | k | M | G | T | P | E
//! decimalExponent ::= ("e" | "E") sign? digits
//! ```

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest quantity string accepted by [`Quantity::parse`], in bytes.
pub const MAX_QUANTITY_LEN: usize = 64;

/// Nano-units per unit.
const NANOS: u128 = 1_000_000_000;

/// Binary SI suffixes, index `i` meaning `1024^i`.
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// Decimal SI suffixes, index `i` meaning `10^(3i - 9)`.
const DECIMAL_SUFFIXES: [&str; 10] = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];

/// Regular expression (ECMA-262 compatible) describing the accepted syntax; used in the
/// OpenAPI schema.
const QUANTITY_PATTERN: &str =
    r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?[0-9]+))?$";

/// A parsed and normalized Kubernetes resource quantity.
///
/// Equality, ordering and hashing are by numeric value only: `1Gi == 1073741824` and
/// `1000m == 1`. [`Display`](fmt::Display), [`Quantity::as_str`] and serialization use
/// the Kubernetes canonical form: a binary suffix is kept when the value was written
/// with one and is an exact multiple of it, otherwise the largest decimal SI suffix
/// that keeps the mantissa an integer is used.
///
/// Serialization is always the canonical string; deserialization accepts a string or a
/// plain number (Kubernetes accepts `pods: 20`).
///
/// ```
/// use kubenova_api::quantity::Quantity;
///
/// let mem: Quantity = "1024Mi".parse()?;
/// assert_eq!(mem.to_string(), "1Gi");
/// assert_eq!(mem.value_nanos(), 1_073_741_824 * 1_000_000_000);
///
/// let cpu = Quantity::parse("0.5")?;
/// assert_eq!(cpu.as_str(), "500m");
/// assert_eq!(cpu.milli_value(), 500);
/// assert!(cpu < Quantity::parse("1")?);
/// assert!(Quantity::parse("1Gi")? > Quantity::parse("1G")?);
///
/// // Numbers and strings are both accepted on the wire; output is canonical.
/// let pods: Quantity = serde_json::from_str("20")?;
/// assert_eq!(serde_json::to_string(&pods)?, r#""20""#);
///
/// let err = Quantity::parse("4GB").unwrap_err();
/// assert!(err.to_string().contains(r#"unknown suffix "GB""#));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Quantity {
    nanos: i128,
    binary: bool,
    canonical: String,
}

/// Why a string is not a valid [`Quantity`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityErrorKind {
    /// The input is empty.
    #[error("must not be empty")]
    Empty,
    /// The input is longer than [`MAX_QUANTITY_LEN`].
    #[error("is {len} characters long; at most {MAX_QUANTITY_LEN} are allowed")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The input contains whitespace.
    #[error("must not contain whitespace")]
    Whitespace,
    /// The input does not start with an optionally signed number.
    #[error("must start with an optionally signed number, e.g. \"500m\", \"4Gi\" or \"1.5\"")]
    NoDigits,
    /// The number has more than one decimal point.
    #[error("has more than one decimal point")]
    MultipleDecimalPoints,
    /// The suffix after the number is not a known one.
    #[error("unknown suffix {suffix:?} (use Ki, Mi, Gi, Ti, Pi, Ei or n, u, m, k, M, G, T, P, E)")]
    UnknownSuffix {
        /// The offending suffix.
        suffix: String,
    },
    /// A decimal exponent (`e3`, `E-2`) is malformed.
    #[error(
        "invalid decimal exponent {exponent:?} (expected e or E followed by an optionally signed integer, e.g. \"1e3\")"
    )]
    InvalidExponent {
        /// The offending exponent suffix.
        exponent: String,
    },
    /// The magnitude does not fit in an `i128` of nano-units.
    #[error("is too large (the magnitude must fit in an i128 of nano-units, about 1.7e29)")]
    Overflow,
}

/// Error returned by [`Quantity::parse`]: the (possibly truncated) input and why it was
/// rejected.
///
/// Its [`Display`](fmt::Display) is the reason only, meant to follow the input:
/// `format!("invalid quantity {input:?}: {err}")`, which is exactly what
/// [`QuantityError::describe`] and the serde deserializer produce.
///
/// ```
/// use kubenova_api::quantity::{Quantity, QuantityErrorKind};
///
/// let err = Quantity::parse("4 cores").unwrap_err();
/// assert_eq!(err.kind(), &QuantityErrorKind::Whitespace);
/// assert_eq!(err.to_string(), "must not contain whitespace");
/// assert_eq!(err.describe(), r#"invalid quantity "4 cores": must not contain whitespace"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct QuantityError {
    input: String,
    kind: QuantityErrorKind,
}

impl QuantityError {
    fn new(input: &str, kind: QuantityErrorKind) -> Self {
        let input = if input.len() > MAX_QUANTITY_LEN {
            let mut end = MAX_QUANTITY_LEN;
            while !input.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &input[..end])
        } else {
            input.to_owned()
        };
        Self { input, kind }
    }

    /// The rejected input (truncated to [`MAX_QUANTITY_LEN`] bytes plus `…` if longer).
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Why the input was rejected.
    pub fn kind(&self) -> &QuantityErrorKind {
        &self.kind
    }

    /// The full message, input included: `invalid quantity "4GB": unknown suffix "GB" (…)`.
    pub fn describe(&self) -> String {
        format!("invalid quantity {:?}: {}", self.input, self.kind)
    }
}

impl Quantity {
    /// Parses a Kubernetes quantity such as `500m`, `4Gi`, `1.5`, `2e3` or `-1k`.
    ///
    /// Fractions smaller than one nano-unit are rounded away from zero, as Kubernetes
    /// does (`0.0000000001` becomes `1n`).
    ///
    /// ```
    /// use kubenova_api::quantity::Quantity;
    ///
    /// assert_eq!(Quantity::parse("1.5Gi").unwrap().as_str(), "1536Mi");
    /// assert_eq!(Quantity::parse("1e3").unwrap().as_str(), "1k");
    /// assert!(Quantity::parse("1.2.3").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Quantity, QuantityError> {
        let (nanos, binary) = parse_nanos(input).map_err(|kind| QuantityError::new(input, kind))?;
        Ok(Self::from_parts(nanos, binary))
    }

    /// A decimal quantity with exactly `nanos` nano-units.
    ///
    /// ```
    /// use kubenova_api::quantity::Quantity;
    ///
    /// assert_eq!(Quantity::from_nanos(250_000_000).as_str(), "250m");
    /// ```
    pub fn from_nanos(nanos: i128) -> Quantity {
        Self::from_parts(nanos, false)
    }

    fn from_parts(nanos: i128, binary: bool) -> Quantity {
        Quantity {
            nanos,
            binary,
            canonical: canonical_string(nanos, binary),
        }
    }

    /// The canonical string form (same as [`Display`](fmt::Display)).
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The exact value in nano-units (`1` is `1_000_000_000`).
    pub fn value_nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in whole units, rounded away from zero like Kubernetes' `Value()`
    /// (for the non-negative quantities used in quotas this is the ceiling).
    pub fn value(&self) -> i128 {
        div_away_from_zero(self.nanos, NANOS as i128)
    }

    /// The value in milli-units, rounded away from zero like Kubernetes'
    /// `MilliValue()` (for non-negative quantities this is the ceiling: `1n` → `1`).
    pub fn milli_value(&self) -> i128 {
        div_away_from_zero(self.nanos, 1_000_000)
    }

    /// The value as a floating point number of units (may lose precision).
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANOS as f64
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// Whether the value is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// Whether the value is a whole number of units (no milli/micro/nano part).
    pub fn is_integer(&self) -> bool {
        self.nanos % NANOS as i128 == 0
    }

    /// Adds two quantities, or `None` on overflow. The result keeps `self`'s notation
    /// (binary or decimal), or `other`'s when `self` is zero, like Kubernetes' `Add`.
    ///
    /// ```
    /// use kubenova_api::quantity::Quantity;
    ///
    /// let a = Quantity::parse("512Mi").unwrap();
    /// let b = Quantity::parse("0.5Gi").unwrap();
    /// assert_eq!(a.checked_add(&b).unwrap().as_str(), "1Gi");
    /// ```
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_add(other.nanos)?;
        Some(Self::from_parts(nanos, self.combined_format(other)))
    }

    /// Subtracts `other` from `self`, or `None` on overflow. Notation as for
    /// [`Quantity::checked_add`].
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        let nanos = self.nanos.checked_sub(other.nanos)?;
        Some(Self::from_parts(nanos, self.combined_format(other)))
    }

    fn combined_format(&self, other: &Quantity) -> bool {
        if self.nanos == 0 {
            other.binary
        } else {
            self.binary
        }
    }
}

impl Default for Quantity {
    /// The zero quantity, `"0"`.
    fn default() -> Self {
        Self::from_parts(0, false)
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl TryFrom<&str> for Quantity {
    type Error = QuantityError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Quantity::parse(s)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({:?})", self.canonical)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.canonical)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(QuantityVisitor)
    }
}

struct QuantityVisitor;

impl QuantityVisitor {
    fn parse<E: de::Error>(s: &str) -> Result<Quantity, E> {
        Quantity::parse(s).map_err(|e| E::custom(e.describe()))
    }
}

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes quantity string such as \"500m\" or \"4Gi\", or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Self::parse(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Self::parse(&v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        Self::parse(&v.to_string())
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Quantity, E> {
        Self::parse(&v.to_string())
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Quantity, E> {
        Self::parse(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        // `{:e}` is the shortest round-tripping form ("1.5e0", "1e300", "NaN", "inf"), so
        // it is exact for the decimal the user wrote and never over-long.
        Self::parse(&format!("{v:e}"))
    }
}

impl utoipa::PartialSchema for Quantity {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "Kubernetes resource quantity, e.g. \"500m\" (CPU), \"4Gi\" (memory) or \"20\" \
                 (count). Binary suffixes Ki Mi Gi Ti Pi Ei, decimal suffixes n u m k M G T P \
                 E, or a decimal exponent such as 1e3. Plain JSON numbers are accepted on \
                 input; output is always the canonical string.",
            ))
            .pattern(Some(QUANTITY_PATTERN))
            .max_length(Some(MAX_QUANTITY_LEN))
            .examples([serde_json::json!("500m")])
            .into()
    }
}

impl utoipa::ToSchema for Quantity {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Quantity")
    }
}

/// Divides rounding away from zero (Kubernetes' `RoundUp`).
fn div_away_from_zero(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d == 0 {
        q
    } else if n < 0 {
        q - 1
    } else {
        q + 1
    }
}

/// Canonical Kubernetes rendering of `nanos`.
fn canonical_string(nanos: i128, binary: bool) -> String {
    if nanos == 0 {
        return "0".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let mag = nanos.unsigned_abs();
    // Kubernetes shows binary values below 1Ki, or with a fractional part, as decimal.
    if binary && mag >= 1024 * NANOS && mag.is_multiple_of(NANOS) {
        let mut units = mag / NANOS;
        let mut exp = 0;
        while exp < BINARY_SUFFIXES.len() - 1 && units.is_multiple_of(1024) {
            units /= 1024;
            exp += 1;
        }
        return format!("{sign}{units}{}", BINARY_SUFFIXES[exp]);
    }
    let mut mantissa = mag;
    let mut exp = 0;
    while exp < DECIMAL_SUFFIXES.len() - 1 && mantissa.is_multiple_of(1000) {
        mantissa /= 1000;
        exp += 1;
    }
    format!("{sign}{mantissa}{}", DECIMAL_SUFFIXES[exp])
}

/// The multiplier a valid suffix denotes.
enum Suffix {
    /// `10^exp`.
    Decimal(i64),
    /// `1024^exp`.
    Binary(u32),
}

fn parse_suffix(suffix: &str) -> Result<Suffix, QuantityErrorKind> {
    if suffix.is_empty() {
        return Ok(Suffix::Decimal(0));
    }
    if let Some(i) = BINARY_SUFFIXES[1..].iter().position(|s| *s == suffix) {
        return Ok(Suffix::Binary(i as u32 + 1));
    }
    if let Some(i) = DECIMAL_SUFFIXES.iter().position(|s| *s == suffix) {
        return Ok(Suffix::Decimal(3 * i as i64 - 9));
    }
    let bytes = suffix.as_bytes();
    if matches!(bytes[0], b'e' | b'E')
        && (bytes.len() == 1 || matches!(bytes[1], b'0'..=b'9' | b'+' | b'-'))
    {
        let invalid = || QuantityErrorKind::InvalidExponent {
            exponent: suffix.to_owned(),
        };
        let rest = &suffix[1..];
        let (negative, digits) = match rest.as_bytes().first() {
            Some(b'-') => (true, &rest[1..]),
            Some(b'+') => (false, &rest[1..]),
            _ => (false, rest),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        // Saturate: an absurd exponent either overflows or rounds to 1n below.
        let magnitude = digits.parse::<i64>().unwrap_or(i64::MAX / 2);
        return Ok(Suffix::Decimal(if negative {
            -magnitude
        } else {
            magnitude
        }));
    }
    Err(QuantityErrorKind::UnknownSuffix {
        suffix: suffix.to_owned(),
    })
}

/// Parses `input` into (nano-units, written with a binary suffix).
fn parse_nanos(input: &str) -> Result<(i128, bool), QuantityErrorKind> {
    if input.is_empty() {
        return Err(QuantityErrorKind::Empty);
    }
    if input.len() > MAX_QUANTITY_LEN {
        return Err(QuantityErrorKind::TooLong { len: input.len() });
    }
    if input.chars().any(char::is_whitespace) {
        return Err(QuantityErrorKind::Whitespace);
    }
    let bytes = input.as_bytes();
    let mut pos = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            pos += 1;
            true
        }
        Some(b'+') => {
            pos += 1;
            false
        }
        _ => false,
    };
    let digits_from = |start: usize| {
        bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let int_start = pos;
    pos += digits_from(pos);
    let int_digits = &input[int_start..pos];
    let mut frac_digits = "";
    if bytes.get(pos) == Some(&b'.') {
        pos += 1;
        let frac_start = pos;
        pos += digits_from(pos);
        frac_digits = &input[frac_start..pos];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return Err(QuantityErrorKind::NoDigits);
    }
    let suffix = &input[pos..];
    if suffix.starts_with('.') {
        return Err(QuantityErrorKind::MultipleDecimalPoints);
    }
    let (exp10, exp1024, binary) = match parse_suffix(suffix)? {
        Suffix::Decimal(e) => (e, 0, false),
        Suffix::Binary(e) => (0, e, true),
    };

    let mut mag = BigUint::from_decimal(int_digits, frac_digits);
    if mag.is_zero() {
        return Ok((0, binary));
    }
    for _ in 0..exp1024 {
        mag.mul_small(1024);
    }
    // value = digits * 10^(exp10 - frac_len) units = digits * 10^shift nanos
    let shift = exp10
        .saturating_add(9)
        .saturating_sub(frac_digits.len() as i64);
    let mut inexact = false;
    if shift >= 0 {
        for _ in 0..shift {
            mag.mul_small(10);
            if mag.bits() > 127 {
                return Err(QuantityErrorKind::Overflow);
            }
        }
    } else {
        for _ in 0..shift.unsigned_abs() {
            if mag.div_small(10) != 0 {
                inexact = true;
            }
            if mag.is_zero() {
                inexact = true;
                break;
            }
        }
    }
    let mut magnitude = mag.to_u128().ok_or(QuantityErrorKind::Overflow)?;
    if inexact {
        magnitude += 1;
    }
    let magnitude = i128::try_from(magnitude).map_err(|_| QuantityErrorKind::Overflow)?;
    Ok((if negative { -magnitude } else { magnitude }, binary))
}

/// Minimal unsigned big integer (little-endian base-2^32 limbs), enough to evaluate
/// `digits * 1024^k * 10^±n` exactly for inputs of at most [`MAX_QUANTITY_LEN`] bytes.
struct BigUint(Vec<u32>);

impl BigUint {
    fn from_decimal(int_digits: &str, frac_digits: &str) -> Self {
        let mut n = BigUint(Vec::new());
        for b in int_digits.bytes().chain(frac_digits.bytes()) {
            n.mul_small(10);
            n.add_small(u32::from(b - b'0'));
        }
        n
    }

    fn is_zero(&self) -> bool {
        self.0.iter().all(|&l| l == 0)
    }

    fn mul_small(&mut self, m: u32) {
        let mut carry = 0u64;
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry != 0 {
            self.0.push(carry as u32);
        }
    }

    fn add_small(&mut self, a: u32) {
        let mut carry = u64::from(a);
        for limb in &mut self.0 {
            if carry == 0 {
                return;
            }
            let v = u64::from(*limb) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry != 0 {
            self.0.push(carry as u32);
        }
    }

    /// Divides in place and returns the remainder.
    fn div_small(&mut self, d: u32) -> u32 {
        let mut rem = 0u64;
        for limb in self.0.iter_mut().rev() {
            let v = (rem << 32) | u64::from(*limb);
            *limb = (v / u64::from(d)) as u32;
            rem = v % u64::from(d);
        }
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
        rem as u32
    }

    fn bits(&self) -> u32 {
        let mut limbs = self.0.len();
        while limbs > 0 && self.0[limbs - 1] == 0 {
            limbs -= 1;
        }
        if limbs == 0 {
            return 0;
        }
        (limbs as u32 - 1) * 32 + (32 - self.0[limbs - 1].leading_zeros())
    }

    fn to_u128(&self) -> Option<u128> {
        if self.bits() > 128 {
            return None;
        }
        Some(
            self.0
                .iter()
                .take(4)
                .enumerate()
                .fold(0u128, |acc, (i, &l)| acc | (u128::from(l) << (32 * i))),
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const N: i128 = 1_000_000_000;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn valid_values_and_canonical_forms() {
        let cases: &[(&str, i128, &str)] = &[
            ("0", 0, "0"),
            ("-0", 0, "0"),
            ("0Gi", 0, "0"),
            ("000", 0, "0"),
            ("1", N, "1"),
            ("+1", N, "1"),
            ("1000m", N, "1"),
            ("0.5", N / 2, "500m"),
            (".5", N / 2, "500m"),
            ("1.", N, "1"),
            ("1.5", 3 * N / 2, "1500m"),
            ("100m", N / 10, "100m"),
            ("250m", N / 4, "250m"),
            ("1m", N / 1000, "1m"),
            ("1u", 1000, "1u"),
            ("1n", 1, "1n"),
            ("1500n", 1500, "1500n"),
            ("2000", 2000 * N, "2k"),
            ("1k", 1000 * N, "1k"),
            ("1e3", 1000 * N, "1k"),
            ("1E3", 1000 * N, "1k"),
            ("1e+3", 1000 * N, "1k"),
            ("5E-2", 5 * N / 100, "50m"),
            ("1.5e3", 1500 * N, "1500"),
            ("100M", 100_000_000 * N, "100M"),
            ("1G", 1_000_000_000 * N, "1G"),
            ("1T", 1_000_000_000_000 * N, "1T"),
            ("2P", 2_000_000_000_000_000 * N, "2P"),
            ("3E", 3_000_000_000_000_000_000 * N, "3E"),
            ("1000E", 1_000_000_000_000_000_000_000 * N, "1000E"),
            ("1Ki", 1024 * N, "1Ki"),
            ("1024", 1024 * N, "1024"),
            ("1024Mi", 1024 * 1024 * 1024 * N, "1Gi"),
            ("1.5Gi", 1536 * 1024 * 1024 * N, "1536Mi"),
            ("0.5Gi", 512 * 1024 * 1024 * N, "512Mi"),
            ("4Gi", 4 * (1 << 30) * N, "4Gi"),
            ("20Gi", 20 * (1 << 30) * N, "20Gi"),
            ("2Ti", 2 * (1 << 40) * N, "2Ti"),
            ("1Pi", (1 << 50) * N, "1Pi"),
            ("1Ei", (1 << 60) * N, "1Ei"),
            ("1024Ei", (1 << 70) * N, "1024Ei"),
            ("1.5Ki", 1536 * N, "1536"),
            ("1000Ki", 1_024_000 * N, "1000Ki"),
            ("0.5Ki", 512 * N, "512"),
            ("0.3Ki", 3072 * N / 10, "307200m"),
            ("-1Gi", -(1 << 30) * N, "-1Gi"),
            ("-1.5", -3 * N / 2, "-1500m"),
            ("-500m", -N / 2, "-500m"),
            ("12.345", 12_345 * N / 1000, "12345m"),
            ("007", 7 * N, "7"),
            // Rounded away from zero to whole nano-units, like Kubernetes.
            ("0.0000000001", 1, "1n"),
            ("1.0000000001", N + 1, "1000000001n"),
            ("-0.0000000001", -1, "-1n"),
            ("1e-30", 1, "1n"),
            ("0e999999999999999999999999", 0, "0"),
            (
                "1.00000000000000000000000000000000000000000000000000000",
                N,
                "1",
            ),
            (
                "100000000000000000000",
                100_000_000_000_000_000_000 * N,
                "100E",
            ),
        ];
        for &(input, nanos, canonical) in cases {
            let got = q(input);
            assert_eq!(got.value_nanos(), nanos, "value of {input:?}");
            assert_eq!(got.as_str(), canonical, "canonical form of {input:?}");
            assert_eq!(got.to_string(), canonical, "Display of {input:?}");
            // Canonical forms are fixed points.
            let again = q(canonical);
            assert_eq!(again, got, "reparse of {canonical:?}");
            assert_eq!(again.as_str(), canonical, "reparse of {canonical:?}");
        }
    }

    #[test]
    fn invalid_values_say_why() {
        let long = "1".repeat(MAX_QUANTITY_LEN + 1);
        let cases: &[(&str, &str)] = &[
            ("", "must not be empty"),
            (" ", "whitespace"),
            ("1 ", "whitespace"),
            (" 1", "whitespace"),
            ("4 cores", "whitespace"),
            ("1.2.3", "more than one decimal point"),
            ("1..2", "more than one decimal point"),
            (
                "4GB",
                r#"unknown suffix "GB" (use Ki, Mi, Gi, Ti, Pi, Ei or n, u, m, k, M, G, T, P, E)"#,
            ),
            ("1K", r#"unknown suffix "K""#),
            ("1KiB", r#"unknown suffix "KiB""#),
            ("1gi", r#"unknown suffix "gi""#),
            ("1Gi1", r#"unknown suffix "Gi1""#),
            ("1mm", r#"unknown suffix "mm""#),
            ("1µ", r#"unknown suffix "µ""#),
            ("1-", r#"unknown suffix "-""#),
            ("abc", "must start with an optionally signed number"),
            ("--1", "must start with an optionally signed number"),
            ("+-1", "must start with an optionally signed number"),
            ("-", "must start with an optionally signed number"),
            (".", "must start with an optionally signed number"),
            ("Gi", "must start with an optionally signed number"),
            ("NaN", "must start with an optionally signed number"),
            ("inf", "must start with an optionally signed number"),
            ("1e", r#"invalid decimal exponent "e""#),
            ("1e+", r#"invalid decimal exponent "e+""#),
            ("1e3.5", r#"invalid decimal exponent "e3.5""#),
            ("1E3Gi", r#"invalid decimal exponent "E3Gi""#),
            ("1e40", "too large"),
            ("1e9999999999999999999999", "too large"),
            ("200000000000000000000000000000", "too large"),
            ("1000000000000Ei", "too large"),
            ("-1000000000000Ei", "too large"),
            (&long, "at most 64"),
        ];
        for &(input, why) in cases {
            let err = Quantity::parse(input).expect_err(input);
            let msg = err.describe();
            assert!(
                msg.contains(why),
                "{input:?}: {msg:?} should mention {why:?}"
            );
            assert!(msg.starts_with("invalid quantity \""), "{msg}");
            assert!(msg.ends_with(&err.to_string()), "{msg}");
        }
        let err = Quantity::parse(&long).unwrap_err();
        assert_eq!(err.kind(), &QuantityErrorKind::TooLong { len: 65 });
        assert!(err.input().ends_with('…'));
    }

    #[test]
    fn limits_of_the_range() {
        // i128::MAX nanos is about 1.7e29 units; 1e29 fits, 2e29 does not.
        let big = q("100000000000000000000000000000");
        assert_eq!(big.value(), 100_000_000_000_000_000_000_000_000_000);
        assert!(Quantity::parse("1e29").is_ok());
        assert!(Quantity::parse("-1e29").is_ok());
        assert!(Quantity::parse("1e30").is_err());
    }

    #[test]
    fn ordering_and_equality_are_numeric() {
        assert!(q("1Gi") > q("1G"));
        assert!(q("500m") < q("1"));
        assert!(q("-1") < q("0"));
        assert!(q("999m") < q("1"));
        assert!(q("1Ki") > q("1k"));
        assert_eq!(q("1Gi"), q("1073741824"));
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("1e3"), q("1k"));
        let mut sorted = [q("1Gi"), q("1"), q("500m"), q("1G"), q("2k")];
        sorted.sort();
        let names: Vec<_> = sorted.iter().map(Quantity::as_str).collect();
        assert_eq!(names, ["500m", "1", "2k", "1G", "1Gi"]);
        let set: HashSet<_> = [q("1"), q("1000m"), q("1e0")].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn accessors() {
        let x = q("1n");
        assert_eq!(x.milli_value(), 1, "milli value rounds up");
        assert_eq!(x.value(), 1, "value rounds up");
        assert_eq!(q("1500m").value(), 2);
        assert_eq!(q("1500m").milli_value(), 1500);
        assert_eq!(
            q("-1n").milli_value(),
            -1,
            "away from zero, like Kubernetes"
        );
        assert_eq!(q("2Gi").value(), 2 * 1024 * 1024 * 1024);
        assert!((q("1500m").as_f64() - 1.5).abs() < f64::EPSILON);
        assert!(q("0").is_zero() && q("0m").is_zero() && !q("1n").is_zero());
        assert!(q("-1").is_negative() && !q("1").is_negative());
        assert!(q("3").is_integer() && !q("3500m").is_integer());
        assert_eq!(Quantity::default().as_str(), "0");
        assert_eq!(Quantity::from_nanos(1500).as_str(), "1500n");
        assert_eq!(
            format!("{:?}", q("1024Mi")),
            r#"Quantity("1Gi")"#,
            "Debug shows canonical form"
        );
        let parsed: Quantity = "4Gi".parse().unwrap();
        assert_eq!(parsed, Quantity::try_from("4Gi").unwrap());
    }

    #[test]
    fn arithmetic() {
        assert_eq!(q("1").checked_add(&q("500m")).unwrap().as_str(), "1500m");
        assert_eq!(q("1Gi").checked_add(&q("1Gi")).unwrap().as_str(), "2Gi");
        assert_eq!(q("0").checked_add(&q("1Gi")).unwrap().as_str(), "1Gi");
        assert_eq!(q("2Gi").checked_sub(&q("1Gi")).unwrap().as_str(), "1Gi");
        assert_eq!(q("1").checked_sub(&q("2")).unwrap().as_str(), "-1");
        let max = Quantity::from_nanos(i128::MAX);
        assert!(max.checked_add(&q("1n")).is_none());
        assert!(
            Quantity::from_nanos(i128::MIN)
                .checked_sub(&q("1n"))
                .is_none()
        );
    }

    #[test]
    fn serde_round_trip() {
        let v: Quantity = serde_json::from_str(r#""1024Mi""#).unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), r#""1Gi""#);
        let v: Quantity = serde_json::from_str("20").unwrap();
        assert_eq!(v.as_str(), "20");
        let v: Quantity = serde_json::from_str("-3").unwrap();
        assert_eq!(v.as_str(), "-3");
        let v: Quantity = serde_json::from_str("0.5").unwrap();
        assert_eq!(v.as_str(), "500m");
        let v: Quantity = serde_json::from_str("0.1").unwrap();
        assert_eq!(v.as_str(), "100m");
        let v: Quantity = serde_json::from_str("1e3").unwrap();
        assert_eq!(v.as_str(), "1k");
        let err = serde_json::from_str::<Quantity>("1e300").unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
        let err = serde_json::from_str::<Quantity>(r#""4GB""#).unwrap_err();
        assert!(err.to_string().contains(r#"unknown suffix "GB""#), "{err}");
        let err = serde_json::from_str::<Quantity>("true").unwrap_err();
        assert!(err.to_string().contains("a Kubernetes quantity"), "{err}");
        let v: Quantity = serde_saphyr::from_str("4").unwrap();
        assert_eq!(v.as_str(), "4");
        let v: Quantity = serde_saphyr::from_str("4Gi").unwrap();
        assert_eq!(v.as_str(), "4Gi");
        // A YAML `.nan` is refused by the parser already; a NaN that reaches the
        // visitor from another format is refused by it.
        let err = serde_saphyr::from_str::<Quantity>(".nan").unwrap_err();
        assert!(err.to_string().contains(".nan"), "{err}");
        use serde::de::IntoDeserializer as _;
        let de: serde::de::value::F64Deserializer<serde::de::value::Error> =
            f64::NAN.into_deserializer();
        let err = Quantity::deserialize(de).unwrap_err();
        assert!(
            err.to_string().contains("invalid quantity \"NaN\""),
            "{err}"
        );
    }

    #[test]
    fn openapi_schema_is_a_string_with_example() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_value(Quantity::schema()).unwrap();
        assert_eq!(schema["type"], "string");
        assert_eq!(schema["examples"][0], "500m");
        let pattern = regex::Regex::new(schema["pattern"].as_str().unwrap()).unwrap();
        for ok in ["500m", "4Gi", "1e3", "-1.5", ".5", "1."] {
            assert!(pattern.is_match(ok), "{ok}");
            assert!(Quantity::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["4GB", "1.2.3", "abc", "1e"] {
            assert!(!pattern.is_match(bad), "{bad}");
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(<Quantity as utoipa::ToSchema>::name(), "Quantity");
    }
}
