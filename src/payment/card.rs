//! Card values and their rules: the PAN (Luhn, brand from IIN ranges, allowed lengths), the
//! expiry (MMYY, not past a "today" passed in) and the CVV (3 digits, 4 for Amex).
//!
//! Every type that holds a card digit zeroizes on drop and renders redacted: a [`Pan`] shows
//! only its brand and last four (PCI DSS 3.4.1 allows no more), an [`Expiry`] or [`Cvv`] shows
//! bullets. The only way to read a value is an explicit `reveal`, for the one-time unlock.
//! This module never reads a clock.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Shortest PAN any scheme issues (ISO/IEC 7812-1 allows 8, card schemes use 12 and up).
pub const PAN_MIN_LEN: usize = 12;
/// Longest PAN (ISO/IEC 7812-1).
pub const PAN_MAX_LEN: usize = 19;
/// Digits of the IIN that decide a brand (the longest range below is six digits).
const IIN_DIGITS: usize = 6;

/// Card scheme, decided from the leading digits (the IIN).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Brand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    UnionPay,
    Maestro,
}

/// One IIN range: the first `digits` digits of the PAN, read as a number, in `lo..=hi`.
struct IinRange {
    digits: usize,
    lo: u32,
    hi: u32,
    brand: Brand,
}

const fn iin(digits: usize, lo: u32, hi: u32, brand: Brand) -> IinRange {
    IinRange {
        digits,
        lo,
        hi,
        brand,
    }
}

/// Where ranges overlap (UnionPay 62 and Discover 622126-622925), the longer prefix wins.
/// Maestro is listed only by its own well-known IINs: its historical "50, 56-69" block overlaps
/// Discover and UnionPay and would misname their cards.
const IIN_RANGES: &[IinRange] = &[
    iin(1, 4, 4, Brand::Visa),
    iin(2, 51, 55, Brand::Mastercard),
    iin(4, 2221, 2720, Brand::Mastercard),
    iin(2, 34, 34, Brand::Amex),
    iin(2, 37, 37, Brand::Amex),
    iin(4, 6011, 6011, Brand::Discover),
    iin(3, 644, 649, Brand::Discover),
    iin(2, 65, 65, Brand::Discover),
    iin(6, 622126, 622925, Brand::Discover),
    iin(4, 3528, 3589, Brand::Jcb),
    iin(2, 36, 36, Brand::Diners),
    iin(3, 300, 305, Brand::Diners),
    iin(2, 38, 39, Brand::Diners),
    iin(2, 62, 62, Brand::UnionPay),
    iin(4, 5018, 5018, Brand::Maestro),
    iin(4, 5020, 5020, Brand::Maestro),
    iin(4, 5038, 5038, Brand::Maestro),
    iin(4, 5893, 5893, Brand::Maestro),
    iin(4, 6304, 6304, Brand::Maestro),
    iin(4, 6759, 6759, Brand::Maestro),
    iin(4, 6761, 6763, Brand::Maestro),
];

impl Brand {
    /// Lower-case scheme name, as serialised.
    pub fn name(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Jcb => "jcb",
            Brand::Diners => "diners",
            Brand::UnionPay => "union_pay",
            Brand::Maestro => "maestro",
        }
    }

    /// True when the scheme issues PANs of `len` digits.
    pub fn allows_len(self, len: usize) -> bool {
        match self {
            Brand::Visa => matches!(len, 13 | 16 | 19),
            Brand::Mastercard => len == 16,
            Brand::Amex => len == 15,
            Brand::Discover | Brand::Jcb | Brand::UnionPay => (16..=19).contains(&len),
            Brand::Diners => (14..=19).contains(&len),
            Brand::Maestro => (12..=19).contains(&len),
        }
    }

    /// The longest PAN the scheme issues: once reached, no further digit can belong to it.
    pub fn max_len(self) -> usize {
        match self {
            Brand::Mastercard => 16,
            Brand::Amex => 15,
            _ => PAN_MAX_LEN,
        }
    }

    /// Digits of the card security code (CVV2/CVC2 3, Amex CID 4).
    pub fn cvv_len(self) -> usize {
        if self == Brand::Amex { 4 } else { 3 }
    }

    /// The brand of a PAN or PAN prefix (ASCII digits), once the digits keyed so far decide it.
    ///
    /// `None` while the prefix is still ambiguous (`"62"` may be UnionPay or, from `622126`,
    /// Discover) or when no known range matches.
    pub fn detect(digits: &[u8]) -> Option<Brand> {
        let mut best: Option<&IinRange> = None;
        let mut undecided_other = false;
        for range in IIN_RANGES {
            match range_fit(range, digits) {
                Fit::No => {}
                Fit::Yes => {
                    if best.is_none_or(|b| range.digits > b.digits) {
                        best = Some(range);
                    }
                }
                Fit::Maybe => undecided_other = true,
            }
        }
        let best = best?;
        // A range the next digits may still enter is longer than any decided one, and the
        // longer prefix wins: wait unless it names the same brand.
        let contested = undecided_other
            && IIN_RANGES
                .iter()
                .any(|r| r.brand != best.brand && range_fit(r, digits) == Fit::Maybe);
        (!contested).then_some(best.brand)
    }

    /// True when `digits` (a prefix) can still become a PAN of some known brand.
    pub fn possible(digits: &[u8]) -> bool {
        IIN_RANGES.iter().any(|r| range_fit(r, digits) != Fit::No)
    }
}

impl fmt::Display for Brand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fit {
    /// The prefix is inside the range.
    Yes,
    /// The prefix is too short to decide, and some continuation is inside the range.
    Maybe,
    No,
}

fn range_fit(range: &IinRange, digits: &[u8]) -> Fit {
    let have = digits.len().min(range.digits);
    if have == 0 {
        return Fit::Maybe;
    }
    let Some(prefix) = number(digits.get(..have).unwrap_or_default()) else {
        return Fit::No;
    };
    if have == range.digits {
        return if (range.lo..=range.hi).contains(&prefix) {
            Fit::Yes
        } else {
            Fit::No
        };
    }
    // All continuations of the prefix span [prefix·10^k, (prefix+1)·10^k - 1].
    let scale = 10u32.pow((range.digits - have) as u32);
    let lo = prefix * scale;
    let hi = lo + scale - 1;
    if lo >= range.lo && hi <= range.hi {
        Fit::Yes
    } else if hi >= range.lo && lo <= range.hi {
        Fit::Maybe
    } else {
        Fit::No
    }
}

/// The value of up to [`IIN_DIGITS`] ASCII digits; `None` on a non-digit.
fn number(digits: &[u8]) -> Option<u32> {
    if digits.len() > IIN_DIGITS {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Luhn (ISO/IEC 7812-1 Annex B) check over ASCII digits, check digit last. False on any
/// non-digit or an empty input.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let mut sum = 0u32;
    for (i, &c) in digits.iter().rev().enumerate() {
        if !c.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Why a value is not an acceptable card field. Never carries the digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CardError {
    #[error("not all digits")]
    NotDigits,
    #[error("length not allowed")]
    Length,
    #[error("check digit (Luhn) does not match")]
    Luhn,
    #[error("card number range not recognised")]
    UnknownBrand,
    #[error("month must be 01-12")]
    Month,
    #[error("card has expired")]
    Expired,
}

/// A complete, validated primary account number. Zeroized on drop; `Debug` and `Display` show
/// only the brand and last four.
#[derive(Clone, PartialEq, Eq)]
pub struct Pan {
    digits: Zeroizing<String>,
    brand: Option<Brand>,
}

impl Pan {
    /// Validates ASCII digits as a PAN: 12-19 digits, Luhn, and a length the brand issues.
    /// With `allow_unknown_brand`, a number outside every known range is accepted on length
    /// and Luhn alone.
    pub fn parse(digits: &[u8], allow_unknown_brand: bool) -> Result<Pan, CardError> {
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(CardError::NotDigits);
        }
        if !(PAN_MIN_LEN..=PAN_MAX_LEN).contains(&digits.len()) {
            return Err(CardError::Length);
        }
        let brand = Brand::detect(digits);
        match brand {
            Some(b) if !b.allows_len(digits.len()) => return Err(CardError::Length),
            None if !allow_unknown_brand => return Err(CardError::UnknownBrand),
            _ => {}
        }
        if !luhn_valid(digits) {
            return Err(CardError::Luhn);
        }
        Ok(Pan {
            digits: zeroizing_ascii(digits),
            brand,
        })
    }

    /// The scheme, if the number is in a known range.
    pub fn brand(&self) -> Option<Brand> {
        self.brand
    }

    /// The last four digits: the most PCI DSS 3.4.1 lets anyone see besides the full unlock.
    pub fn last4(&self) -> Last4 {
        let s = self.digits.as_bytes();
        let tail = s.get(s.len().saturating_sub(4)..).unwrap_or_default();
        let mut out = [b'0'; 4];
        out.copy_from_slice(tail);
        Last4(out)
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.digits.len()
    }

    /// Always false: a PAN has at least [`PAN_MIN_LEN`] digits.
    pub fn is_empty(&self) -> bool {
        self.digits.is_empty()
    }

    /// The full number. Only for the one-time unlock; never log it.
    pub fn reveal(&self) -> &str {
        &self.digits
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pan({self})")
    }
}

impl fmt::Display for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.brand {
            Some(b) => write!(f, "{b} ••••{}", self.last4()),
            None => write!(f, "••••{}", self.last4()),
        }
    }
}

/// The last four digits of a complete PAN. Not secret (PCI DSS 3.4.1), so it displays and
/// serialises as the four digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Last4([u8; 4]);

impl Last4 {
    pub fn as_str(&self) -> &str {
        // Built only from ASCII digits.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }
}

impl fmt::Display for Last4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Last4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Last4({})", self.as_str())
    }
}

impl Serialize for Last4 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A calendar month, the "today" that expiry checks take instead of reading a clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct YearMonth {
    /// Full year, e.g. 2026.
    pub year: u16,
    /// 1-12.
    pub month: u8,
}

impl YearMonth {
    pub fn new(year: u16, month: u8) -> Option<YearMonth> {
        (1..=12)
            .contains(&month)
            .then_some(YearMonth { year, month })
    }

    /// The UTC calendar month of an instant given as UNIX milliseconds (what expiry dates are
    /// judged against); `None` past the calendar's range.
    pub fn at_unix_ms(unix_ms: u64) -> Option<YearMonth> {
        let secs = i64::try_from(unix_ms / 1_000).ok()?;
        let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
        YearMonth::new(u16::try_from(t.year()).ok()?, u8::from(t.month()))
    }
}

/// A card's expiry month. Cardholder data: redacted in `Debug`/`Display`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Expiry {
    month: u8,
    /// Two-digit year as printed on the card (20YY).
    yy: u8,
}

impl Expiry {
    /// Parses MMYY (ASCII digits) and checks the card is valid in `today`'s month: a card is
    /// good through the last day of its expiry month.
    pub fn parse(mmyy: &[u8], today: YearMonth) -> Result<Expiry, CardError> {
        let e = Expiry::parse_undated(mmyy)?;
        if e.year_month() < today {
            return Err(CardError::Expired);
        }
        Ok(e)
    }

    /// MMYY without the date check: for values checked at capture and read back at unlock.
    pub(crate) fn parse_undated(mmyy: &[u8]) -> Result<Expiry, CardError> {
        if !mmyy.iter().all(u8::is_ascii_digit) {
            return Err(CardError::NotDigits);
        }
        let [m1, m2, y1, y2] = mmyy else {
            return Err(CardError::Length);
        };
        let month = (m1 - b'0') * 10 + (m2 - b'0');
        let yy = (y1 - b'0') * 10 + (y2 - b'0');
        if !(1..=12).contains(&month) {
            return Err(CardError::Month);
        }
        Ok(Expiry { month, yy })
    }

    fn year_month(&self) -> YearMonth {
        YearMonth {
            year: 2000 + u16::from(self.yy),
            month: self.month,
        }
    }

    /// MMYY. Only for the one-time unlock.
    pub fn reveal_mmyy(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(4));
        for d in [self.month / 10, self.month % 10, self.yy / 10, self.yy % 10] {
            s.push(char::from(b'0' + d));
        }
        s
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.month.zeroize();
        self.yy.zeroize();
    }
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Expiry(••/••)")
    }
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("••/••")
    }
}

/// Card security code (sensitive authentication data: never stored after authorisation, here
/// only inside a sealed record). Redacted and zeroized.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvv(Zeroizing<String>);

impl Cvv {
    /// 3 digits, or 4 for Amex; 3 when the brand is unknown.
    pub fn parse(digits: &[u8], brand: Option<Brand>) -> Result<Cvv, CardError> {
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(CardError::NotDigits);
        }
        let want = brand.map_or(3, Brand::cvv_len);
        if digits.len() != want {
            return Err(CardError::Length);
        }
        Ok(Cvv(zeroizing_ascii(digits)))
    }

    /// Only for the one-time unlock.
    pub fn reveal(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvv(•••)")
    }
}

impl fmt::Display for Cvv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("•••")
    }
}

/// A field the caller keys. The API names are `pan`, `expiry`, `cvv`, `postcode`; any other
/// numeric field a deployment configures goes by its own name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldName {
    Pan,
    Expiry,
    Cvv,
    Postcode,
    #[serde(untagged)]
    Other(String),
}

impl FieldName {
    pub fn as_str(&self) -> &str {
        match self {
            FieldName::Pan => "pan",
            FieldName::Expiry => "expiry",
            FieldName::Cvv => "cvv",
            FieldName::Postcode => "postcode",
            FieldName::Other(s) => s,
        }
    }

    /// Inverse of [`FieldName::as_str`].
    pub fn parse(s: &str) -> FieldName {
        match s {
            "pan" => FieldName::Pan,
            "expiry" => FieldName::Expiry,
            "cvv" => FieldName::Cvv,
            "postcode" => FieldName::Postcode,
            other => FieldName::Other(other.to_string()),
        }
    }
}

impl fmt::Display for FieldName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A numeric field other than PAN, expiry and CVV (postcode digits, a member number).
#[derive(Clone, PartialEq, Eq)]
pub struct ExtraValue {
    pub name: FieldName,
    digits: Zeroizing<String>,
}

impl ExtraValue {
    /// Only for the one-time unlock.
    pub fn reveal(&self) -> &str {
        &self.digits
    }
}

impl fmt::Debug for ExtraValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ({} digits)", self.name, self.digits.len())
    }
}

/// Everything the caller keyed for one payment: the product of capture, the plaintext of a
/// sealed record, the result of the one-time unlock. Zeroized on drop; `Debug` shows only the
/// brand and last four.
#[derive(Clone, PartialEq, Eq)]
pub struct CardData {
    pan: Pan,
    expiry: Option<Expiry>,
    cvv: Option<Cvv>,
    extra: Vec<ExtraValue>,
}

impl CardData {
    pub fn new(pan: Pan, expiry: Option<Expiry>, cvv: Option<Cvv>) -> CardData {
        CardData {
            pan,
            expiry,
            cvv,
            extra: Vec::new(),
        }
    }

    /// Adds a numeric field; the name must not be one of the card fields.
    pub fn push_extra(&mut self, name: FieldName, digits: &[u8]) -> Result<(), CardError> {
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(CardError::NotDigits);
        }
        if matches!(name, FieldName::Pan | FieldName::Expiry | FieldName::Cvv) {
            return Err(CardError::Length);
        }
        self.extra.push(ExtraValue {
            name,
            digits: zeroizing_ascii(digits),
        });
        Ok(())
    }

    pub fn pan(&self) -> &Pan {
        &self.pan
    }

    pub fn brand(&self) -> Option<Brand> {
        self.pan.brand()
    }

    pub fn expiry(&self) -> Option<&Expiry> {
        self.expiry.as_ref()
    }

    pub fn cvv(&self) -> Option<&Cvv> {
        self.cvv.as_ref()
    }

    pub fn extra(&self) -> &[ExtraValue] {
        &self.extra
    }

    /// The value of a numeric field by name (postcode, …). Only for the one-time unlock.
    pub fn reveal_extra(&self, name: &FieldName) -> Option<&str> {
        self.extra
            .iter()
            .find(|e| &e.name == name)
            .map(ExtraValue::reveal)
    }
}

impl fmt::Debug for CardData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardData")
            .field("pan", &self.pan)
            .field("expiry", &self.expiry)
            .field("cvv", &self.cvv)
            .field("extra", &self.extra)
            .finish()
    }
}

/// A zeroizing string of ASCII digits, allocated once at its final size (a growing buffer
/// would leave copies behind in freed memory).
pub(crate) fn zeroizing_ascii(digits: &[u8]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::with_capacity(digits.len()));
    for &c in digits {
        s.push(char::from(c));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: YearMonth = YearMonth {
        year: 2026,
        month: 6,
    };

    /// Appends the Luhn check digit to a body of ASCII digits.
    fn with_check(body: &str) -> String {
        for d in b'0'..=b'9' {
            let mut s = body.to_string();
            s.push(char::from(d));
            if luhn_valid(s.as_bytes()) {
                return s;
            }
        }
        unreachable!()
    }

    #[test]
    fn luhn_accepts_known_numbers_and_rejects_single_changes() {
        for good in [
            "4111111111111111",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "79927398713",
        ] {
            assert!(luhn_valid(good.as_bytes()), "{good}");
            // Any single-digit change breaks the check (the property Luhn guarantees).
            let b = good.as_bytes();
            for i in 0..b.len() {
                let mut m = b.to_vec();
                m[i] = b'0' + (m[i] - b'0' + 1) % 10;
                assert!(!luhn_valid(&m), "{good} changed at {i}");
            }
        }
        assert!(!luhn_valid(b""));
        assert!(!luhn_valid(b"4111-1111"));
    }

    #[test]
    fn brands_follow_iin_ranges() {
        let cases: &[(&str, Option<Brand>)] = &[
            ("4", Some(Brand::Visa)),
            ("51", Some(Brand::Mastercard)),
            ("55", Some(Brand::Mastercard)),
            ("2221", Some(Brand::Mastercard)),
            ("2720", Some(Brand::Mastercard)),
            ("2220", None),
            ("2721", None),
            ("34", Some(Brand::Amex)),
            ("37", Some(Brand::Amex)),
            ("35", None),
            ("6011", Some(Brand::Discover)),
            ("644", Some(Brand::Discover)),
            ("649", Some(Brand::Discover)),
            ("65", Some(Brand::Discover)),
            ("622126", Some(Brand::Discover)),
            ("622925", Some(Brand::Discover)),
            ("622125", Some(Brand::UnionPay)),
            ("622926", Some(Brand::UnionPay)),
            ("621", Some(Brand::UnionPay)),
            ("3528", Some(Brand::Jcb)),
            ("3589", Some(Brand::Jcb)),
            ("3590", None),
            ("36", Some(Brand::Diners)),
            ("300", Some(Brand::Diners)),
            ("305", Some(Brand::Diners)),
            ("306", None),
            ("38", Some(Brand::Diners)),
            ("39", Some(Brand::Diners)),
            ("6759", Some(Brand::Maestro)),
            ("5018", Some(Brand::Maestro)),
            ("1", None),
            ("9", None),
        ];
        for (prefix, want) in cases {
            assert_eq!(Brand::detect(prefix.as_bytes()), *want, "{prefix}");
        }
    }

    #[test]
    fn ambiguous_prefixes_wait_for_more_digits() {
        // 62 is UnionPay unless the next digits enter Discover's 622126-622925.
        assert_eq!(Brand::detect(b"62"), None);
        assert_eq!(Brand::detect(b"6221"), None);
        assert_eq!(Brand::detect(b"62213"), Some(Brand::Discover));
        assert_eq!(Brand::detect(b"62212"), None);
        // 5 may be Mastercard (51-55) or Maestro (50xx): undecided.
        assert_eq!(Brand::detect(b"5"), None);
        assert_eq!(Brand::detect(b"50"), None);
        assert_eq!(Brand::detect(b"3"), None);
        assert_eq!(Brand::detect(b""), None);
        assert!(Brand::possible(b"5"));
        assert!(Brand::possible(b"3"));
        assert!(!Brand::possible(b"1"));
        assert!(!Brand::possible(b"2220"));
    }

    #[test]
    fn full_pans_get_their_brand() {
        for (pan, brand) in [
            ("4111111111111111", Brand::Visa),
            ("5555555555554444", Brand::Mastercard),
            ("2223003122003222", Brand::Mastercard),
            ("378282246310005", Brand::Amex),
            ("6011111111111117", Brand::Discover),
            ("3530111333300000", Brand::Jcb),
            ("36227206271667", Brand::Diners),
            ("6200000000000005", Brand::UnionPay),
        ] {
            let p = Pan::parse(pan.as_bytes(), false).unwrap();
            assert_eq!(p.brand(), Some(brand), "{pan}");
        }
    }

    #[test]
    fn pan_lengths_follow_the_brand() {
        // Visa: 13, 16, 19 only.
        for len in 12..=19 {
            let pan = with_check(&format!("4{}", "1".repeat(len - 2)));
            let ok = Pan::parse(pan.as_bytes(), false).is_ok();
            assert_eq!(ok, matches!(len, 13 | 16 | 19), "visa {len}");
        }
        // Amex: 15 only.
        for len in 12..=19 {
            let pan = with_check(&format!("37{}", "0".repeat(len - 3)));
            assert_eq!(
                Pan::parse(pan.as_bytes(), false).is_ok(),
                len == 15,
                "amex {len}"
            );
        }
        // Diners: 14-19.
        for len in 12..=19 {
            let pan = with_check(&format!("36{}", "0".repeat(len - 3)));
            assert_eq!(
                Pan::parse(pan.as_bytes(), false).is_ok(),
                len >= 14,
                "diners {len}"
            );
        }
        let too_long = with_check(&"4".repeat(19));
        assert_eq!(
            Pan::parse(format!("{too_long}0").as_bytes(), false),
            Err(CardError::Length)
        );
        assert_eq!(Pan::parse(b"4111111111111112", false), Err(CardError::Luhn));
        assert_eq!(
            Pan::parse(b"41111111x1111111", false),
            Err(CardError::NotDigits)
        );
    }

    #[test]
    fn unknown_ranges_need_the_config_switch() {
        let pan = with_check("990000000000000");
        assert_eq!(
            Pan::parse(pan.as_bytes(), false),
            Err(CardError::UnknownBrand)
        );
        let p = Pan::parse(pan.as_bytes(), true).unwrap();
        assert_eq!(p.brand(), None);
    }

    #[test]
    fn expiry_is_mmyy_and_not_past() {
        assert!(Expiry::parse(b"1230", TODAY).is_ok());
        assert!(
            Expiry::parse(b"0626", TODAY).is_ok(),
            "valid through its month"
        );
        assert_eq!(Expiry::parse(b"0526", TODAY), Err(CardError::Expired));
        assert_eq!(Expiry::parse(b"1225", TODAY), Err(CardError::Expired));
        assert_eq!(Expiry::parse(b"1330", TODAY), Err(CardError::Month));
        assert_eq!(Expiry::parse(b"0030", TODAY), Err(CardError::Month));
        assert_eq!(Expiry::parse(b"123", TODAY), Err(CardError::Length));
        assert_eq!(Expiry::parse(b"12300", TODAY), Err(CardError::Length));
        let e = Expiry::parse(b"1230", TODAY).unwrap();
        assert_eq!(e.reveal_mmyy().as_str(), "1230");
        assert_eq!(YearMonth::new(2026, 13), None);
    }

    #[test]
    fn the_month_of_an_instant_is_utc() {
        // 2026-12-31T23:59:59Z and a second later.
        assert_eq!(
            YearMonth::at_unix_ms(1_798_761_599_000),
            YearMonth::new(2026, 12)
        );
        assert_eq!(
            YearMonth::at_unix_ms(1_798_761_600_000),
            YearMonth::new(2027, 1)
        );
        assert_eq!(YearMonth::at_unix_ms(u64::MAX), None);
    }

    #[test]
    fn cvv_is_three_digits_or_four_for_amex() {
        assert!(Cvv::parse(b"123", Some(Brand::Visa)).is_ok());
        assert!(Cvv::parse(b"123", None).is_ok());
        assert_eq!(
            Cvv::parse(b"1234", Some(Brand::Visa)),
            Err(CardError::Length)
        );
        assert!(Cvv::parse(b"1234", Some(Brand::Amex)).is_ok());
        assert_eq!(
            Cvv::parse(b"123", Some(Brand::Amex)),
            Err(CardError::Length)
        );
        assert_eq!(Cvv::parse(b"12a", None), Err(CardError::NotDigits));
    }

    #[test]
    fn formatting_shows_only_brand_and_last_four() {
        let p = Pan::parse(b"4111111111111111", false).unwrap();
        assert_eq!(p.to_string(), "visa ••••1111");
        assert_eq!(format!("{p:?}"), "Pan(visa ••••1111)");
        assert_eq!(p.last4().as_str(), "1111");
        assert_eq!(serde_json::to_string(&p.last4()).unwrap(), "\"1111\"");
        let e = Expiry::parse(b"1230", TODAY).unwrap();
        let c = Cvv::parse(b"123", Some(Brand::Visa)).unwrap();
        for s in [
            format!("{e:?}"),
            e.to_string(),
            format!("{c:?}"),
            c.to_string(),
        ] {
            assert!(
                !s.contains("12") && !s.contains("30") && !s.contains("23"),
                "{s}"
            );
        }
        // No run of the PAN's digits beyond the last four.
        assert!(!format!("{p:?}").contains("11111"));

        let mut card = CardData::new(p, Some(e), Some(c));
        card.push_extra(FieldName::Postcode, b"90210").unwrap();
        let dbg = format!("{card:?}");
        assert!(dbg.contains("visa ••••1111"), "{dbg}");
        for secret in ["41111", "1230", "123", "90210"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert_eq!(card.reveal_extra(&FieldName::Postcode), Some("90210"));
    }

    #[test]
    fn field_names_serialise_as_api_strings() {
        for name in ["pan", "expiry", "cvv", "postcode", "member_no"] {
            let f = FieldName::parse(name);
            assert_eq!(f.as_str(), name);
            assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{name}\""));
            let back: FieldName = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, f);
        }
        assert_eq!(
            FieldName::parse("member_no"),
            FieldName::Other("member_no".into())
        );
    }
}
