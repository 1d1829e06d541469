//! Kubernetes label selectors: the string syntax of `kubectl get -l` and of the
//! `labelSelector` query parameter, parsed into requirements that are all checked (AND).
//!
//! | Requirement         | Selects records whose labels …                          |
//! |---------------------|---------------------------------------------------------|
//! | `k=v` or `k==v`     | have the key `k` with the value `v`                     |
//! | `k!=v`              | do not have `k` with the value `v` (or lack `k`)        |
//! | `k in (a,b)`        | have `k` with one of the values `a`, `b`                |
//! | `k notin (a,b)`     | do not have `k` with one of these values (or lack `k`)  |
//! | `k`                 | have the key `k`, whatever its value                    |
//! | `!k`                | do not have the key `k`                                 |
//!
//! Requirements are separated by `,`; whitespace between tokens is ignored. Keys and
//! values follow the Kubernetes label rules (see
//! [`label_key_problem`] and [`label_value_problem`]); `in` and `notin` are
//! words of the syntax, not keys. As in Kubernetes, `k=` selects the empty value, and an
//! empty item of a set (`k in (a,)`, `k in ()`) stands for the empty value. The empty
//! selector selects everything. The set-based `>` and `<` of node selectors are not
//! supported.
//!
//! A selector is bounded: at most [`SELECTOR_MAX_LEN`] characters and
//! [`SELECTOR_MAX_REQUIREMENTS`] requirements. A [`Selector`] is only made by
//! [`Selector::parse`], so every selector in hand is valid.
//!
//! ```
//! use kubenova_api::selector::{Operator, Selector};
//! use std::collections::BTreeMap;
//!
//! let s = Selector::parse("env in (prod, staging), tier!=free, !example.com/legacy").unwrap();
//! assert_eq!(s.requirements().len(), 3);
//! assert_eq!(s.requirements()[0].operator(), Operator::In);
//! assert_eq!(s.to_string(), "env in (prod,staging),tier!=free,!example.com/legacy");
//!
//! let labels = BTreeMap::from([("env".to_string(), "prod".to_string())]);
//! assert!(s.matches(&labels));
//!
//! let err = Selector::parse("env in (prod").unwrap_err();
//! assert!(err.to_string().contains("missing ')'"), "{err}");
//! ```

use crate::validate::{ValidationError, label_key_problem, label_value_problem};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Longest selector accepted, in characters.
pub const SELECTOR_MAX_LEN: usize = 1024;
/// Most requirements in one selector.
pub const SELECTOR_MAX_REQUIREMENTS: usize = 32;
/// The query parameter (and the field of a KN-422) that carries a selector.
pub const SELECTOR_FIELD: &str = "labelSelector";

/// How a [`Requirement`] compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// `k=v`, `k==v`: the label has exactly this value.
    Equals,
    /// `k!=v`: the label is absent or has another value.
    NotEquals,
    /// `k in (a,b)`: the label has one of the values.
    In,
    /// `k notin (a,b)`: the label is absent or has none of the values.
    NotIn,
    /// `k`: the label is present.
    Exists,
    /// `!k`: the label is absent.
    DoesNotExist,
}

/// One requirement of a [`Selector`]: a key, an operator and its values (one for
/// `=`/`!=`, at least one for `in`/`notin`, none for `k`/`!k`; sets sorted and without
/// repeats).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The comparison.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values compared with (see the type's docs).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether `labels` satisfy this requirement (Kubernetes semantics: `!=` and `notin`
    /// select records without the key too).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let listed = || value.is_some_and(|v| self.values.iter().any(|w| w == v));
        match self.operator {
            Operator::Equals | Operator::In => listed(),
            Operator::NotEquals | Operator::NotIn => !listed(),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        match self.operator {
            Operator::Equals => write!(f, "{k}={}", self.values.join("")),
            Operator::NotEquals => write!(f, "{k}!={}", self.values.join("")),
            Operator::In => write!(f, "{k} in ({})", self.values.join(",")),
            Operator::NotIn => write!(f, "{k} notin ({})", self.values.join(",")),
            Operator::Exists => write!(f, "{k}"),
            Operator::DoesNotExist => write!(f, "!{k}"),
        }
    }
}

/// A parsed label selector: requirements that must all hold (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// Parses the Kubernetes selector syntax (see the module docs); the empty string (or
    /// only whitespace) is the selector that selects everything.
    ///
    /// ```
    /// use kubenova_api::selector::Selector;
    /// assert!(Selector::parse("").unwrap().is_empty());
    /// assert_eq!(Selector::parse("tier == gold").unwrap().to_string(), "tier=gold");
    /// assert!(Selector::parse("tier=gold!").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let n = input.chars().count();
        if n > SELECTOR_MAX_LEN {
            return Err(SelectorError::new(format!(
                "must be at most {SELECTOR_MAX_LEN} characters (got {n})"
            )));
        }
        let tokens = lex(input);
        Parser { tokens, at: 0 }.selector()
    }

    /// The requirements, in the order written.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// True for the selector that selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    ///
    /// ```
    /// use kubenova_api::selector::Selector;
    /// use std::collections::BTreeMap;
    /// let labels = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
    /// assert!(Selector::parse("tier in (gold,silver),!legacy").unwrap().matches(&labels));
    /// assert!(!Selector::parse("tier,env").unwrap().matches(&labels));
    /// assert!(Selector::parse("env!=prod").unwrap().matches(&labels));
    /// ```
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Selector {
    /// The canonical spelling (`=` for equality, no spaces except around `in`/`notin`),
    /// which parses back to the same selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Why a selector was refused: what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct SelectorError {
    reason: String,
}

impl SelectorError {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// What is wrong, for a message.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl From<SelectorError> for ValidationError {
    /// A KN-422 violation of the field [`SELECTOR_FIELD`].
    fn from(e: SelectorError) -> Self {
        ValidationError::single(SELECTOR_FIELD, e.reason)
    }
}

// ---------------------------------------------------------------------------------
// Lexer and parser (after k8s.io/apimachinery/pkg/labels/selector.go)
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Ident(&'a str),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    In,
    NotIn,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
    End,
}

impl fmt::Display for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "{s:?}"),
            Token::Not => f.write_str("'!'"),
            Token::Eq => f.write_str("'='"),
            Token::DoubleEq => f.write_str("'=='"),
            Token::NotEq => f.write_str("'!='"),
            Token::In => f.write_str("'in'"),
            Token::NotIn => f.write_str("'notin'"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
            Token::Gt => f.write_str("'>'"),
            Token::Lt => f.write_str("'<'"),
            Token::End => f.write_str("the end"),
        }
    }
}

/// Characters that end an identifier.
fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// The tokens of `input`, each with its position (1-based character), ending with `End`.
fn lex(input: &str) -> Vec<(Token<'_>, usize)> {
    let mut out = Vec::new();
    let mut chars = input.char_indices().enumerate().peekable();
    while let Some((pos, (start, c))) = chars.next() {
        let pos = pos + 1;
        let token = match c {
            c if is_space(c) => continue,
            '(' => Token::Open,
            ')' => Token::Close,
            ',' => Token::Comma,
            '>' => Token::Gt,
            '<' => Token::Lt,
            '=' | '!' => {
                let double = chars.next_if(|(_, (_, n))| *n == '=').is_some();
                match (c, double) {
                    ('=', false) => Token::Eq,
                    ('=', true) => Token::DoubleEq,
                    ('!', false) => Token::Not,
                    _ => Token::NotEq,
                }
            }
            _ => {
                let mut end = start + c.len_utf8();
                while let Some((_, (i, n))) =
                    chars.next_if(|(_, (_, n))| !is_space(*n) && !is_special(*n))
                {
                    end = i + n.len_utf8();
                }
                match &input[start..end] {
                    "in" => Token::In,
                    "notin" => Token::NotIn,
                    word => Token::Ident(word),
                }
            }
        };
        out.push((token, pos));
    }
    out.push((Token::End, input.chars().count() + 1));
    out
}

struct Parser<'a> {
    tokens: Vec<(Token<'a>, usize)>,
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Token<'a> {
        self.tokens.get(self.at).map_or(Token::End, |t| t.0)
    }

    fn next(&mut self) -> (Token<'a>, usize) {
        let t = self
            .tokens
            .get(self.at)
            .copied()
            .unwrap_or((Token::End, usize::MAX));
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        t
    }

    fn selector(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek() == Token::End {
            return Ok(Selector { requirements });
        }
        loop {
            let n = requirements.len() + 1;
            if n > SELECTOR_MAX_REQUIREMENTS {
                return Err(SelectorError::new(format!(
                    "must have at most {SELECTOR_MAX_REQUIREMENTS} requirements"
                )));
            }
            requirements.push(self.requirement(n)?);
            match self.next() {
                (Token::End, _) => return Ok(Selector { requirements }),
                (Token::Comma, pos) => {
                    if self.peek() == Token::End {
                        return Err(SelectorError::new(format!(
                            "a requirement must follow the ',' at character {pos}"
                        )));
                    }
                }
                (t, pos) => {
                    return Err(SelectorError::new(format!(
                        "requirement {n}: found {t} at character {pos}, expected ',' or the end{}",
                        if t == Token::Eq || t == Token::NotEq {
                            " ('!key' takes no value: write 'key!=value' to exclude a value)"
                        } else {
                            ""
                        }
                    )));
                }
            }
        }
    }

    fn requirement(&mut self, n: usize) -> Result<Requirement, SelectorError> {
        let negated = self.peek() == Token::Not;
        if negated {
            self.next();
        }
        let key = match self.next() {
            (Token::Ident(k), pos) => {
                if let Some(reason) = label_key_problem(k) {
                    return Err(SelectorError::new(format!(
                        "requirement {n}: the key at character {pos} is not a label key: {reason}"
                    )));
                }
                k.to_string()
            }
            (t, pos) => {
                return Err(SelectorError::new(format!(
                    "requirement {n}: found {t} at character {pos}, expected a label key{}",
                    if matches!(t, Token::In | Token::NotIn) {
                        " ('in' and 'notin' are operators, not keys)"
                    } else {
                        ""
                    }
                )));
            }
        };
        let simple = |operator| {
            Ok(Requirement {
                key: key.clone(),
                operator,
                values: vec![],
            })
        };
        if negated {
            return simple(Operator::DoesNotExist);
        }
        let (op, pos) = match self.peek() {
            Token::End | Token::Comma => return simple(Operator::Exists),
            _ => self.next(),
        };
        let operator = match op {
            Token::Eq | Token::DoubleEq => Operator::Equals,
            Token::NotEq => Operator::NotEquals,
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::Gt | Token::Lt => {
                return Err(SelectorError::new(format!(
                    "requirement {n}: the operator {op} at character {pos} is not supported; use =, ==, !=, in, notin, 'key' or '!key'"
                )));
            }
            t => {
                return Err(SelectorError::new(format!(
                    "requirement {n}: found {t} at character {pos} after the key {key:?}, expected one of =, ==, !=, in, notin, ',' or the end"
                )));
            }
        };
        let mut values = match operator {
            Operator::In | Operator::NotIn => self.set(n, op)?,
            _ => vec![self.exact_value(n, op)?],
        };
        for v in &values {
            if let Some(reason) = label_value_problem(v) {
                return Err(SelectorError::new(format!("requirement {n}: {reason}")));
            }
        }
        values.sort();
        values.dedup();
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    /// The value after `=`, `==` or `!=`; nothing (the end or `,`) is the empty value.
    fn exact_value(&mut self, n: usize, op: Token<'a>) -> Result<String, SelectorError> {
        match self.peek() {
            Token::End | Token::Comma => Ok(String::new()),
            Token::Ident(v) => {
                self.next();
                Ok(v.to_string())
            }
            t => {
                let pos = self.next().1;
                Err(SelectorError::new(format!(
                    "requirement {n}: found {t} at character {pos}, expected a value after {op}"
                )))
            }
        }
    }

    /// `( v1, v2, … )` after `in` or `notin`; an empty item is the empty value.
    fn set(&mut self, n: usize, op: Token<'a>) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            (Token::Open, _) => {}
            (t, pos) => {
                return Err(SelectorError::new(format!(
                    "requirement {n}: found {t} at character {pos}, expected '(' after {op}, as in 'key {} (a,b)'",
                    if op == Token::In { "in" } else { "notin" }
                )));
            }
        }
        let mut values = Vec::new();
        let mut expecting = true;
        loop {
            match self.next() {
                (Token::Ident(v), _) if expecting => {
                    values.push(v.to_string());
                    expecting = false;
                }
                (Token::Comma, _) => {
                    if expecting {
                        values.push(String::new());
                    }
                    expecting = true;
                }
                (Token::Close, _) => {
                    if expecting {
                        values.push(String::new());
                    }
                    return Ok(values);
                }
                (Token::End, _) => {
                    return Err(SelectorError::new(format!(
                        "requirement {n}: missing ')' to close the values of {op}"
                    )));
                }
                (t, pos) => {
                    return Err(SelectorError::new(format!(
                        "requirement {n}: found {t} at character {pos} in the values of {op}, expected a value, ',' or ')'"
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn one(s: &str) -> Requirement {
        let sel = Selector::parse(s).unwrap();
        assert_eq!(sel.requirements().len(), 1, "{s}");
        sel.requirements()[0].clone()
    }

    #[test]
    fn each_operator_parses() {
        let cases: &[(&str, &str, Operator, &[&str])] = &[
            ("tier=gold", "tier", Operator::Equals, &["gold"]),
            ("tier==gold", "tier", Operator::Equals, &["gold"]),
            (" tier = gold ", "tier", Operator::Equals, &["gold"]),
            ("tier!=gold", "tier", Operator::NotEquals, &["gold"]),
            (
                "tier in (gold,silver)",
                "tier",
                Operator::In,
                &["gold", "silver"],
            ),
            (
                "tier in(silver , gold, gold)",
                "tier",
                Operator::In,
                &["gold", "silver"],
            ),
            ("tier notin (free)", "tier", Operator::NotIn, &["free"]),
            (
                "example.com/tier",
                "example.com/tier",
                Operator::Exists,
                &[],
            ),
            (
                "!example.com/tier",
                "example.com/tier",
                Operator::DoesNotExist,
                &[],
            ),
            ("! tier", "tier", Operator::DoesNotExist, &[]),
            ("tier=", "tier", Operator::Equals, &[""]),
            ("tier in (a,)", "tier", Operator::In, &["", "a"]),
            ("tier in ()", "tier", Operator::In, &[""]),
        ];
        for (input, key, op, values) in cases {
            let r = one(input);
            assert_eq!(r.key(), *key, "{input}");
            assert_eq!(r.operator(), *op, "{input}");
            assert_eq!(r.values(), *values, "{input}");
        }
    }

    #[test]
    fn requirements_are_anded_and_displayed_canonically() {
        let s = Selector::parse("a=1,b!=2, c in (x,y),d notin (z),e,!f").unwrap();
        assert_eq!(s.requirements().len(), 6);
        assert_eq!(s.to_string(), "a=1,b!=2,c in (x,y),d notin (z),e,!f");
        assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        assert!(s.matches(&labels(&[("a", "1"), ("c", "y"), ("e", "")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("c", "y")])), "e missing");
        assert!(!s.matches(&labels(&[("a", "1"), ("c", "y"), ("e", ""), ("f", "x")])));
        assert!(!s.matches(&labels(&[("a", "1"), ("b", "2"), ("c", "y"), ("e", "")])));
    }

    #[test]
    fn matching_follows_kubernetes() {
        let l = labels(&[("tier", "gold"), ("env", "")]);
        let m = |s: &str| Selector::parse(s).unwrap().matches(&l);
        assert!(m("tier=gold") && !m("tier=silver") && !m("zone=a"));
        assert!(
            m("tier!=silver") && !m("tier!=gold") && m("zone!=a"),
            "!= selects absent keys"
        );
        assert!(m("tier in (gold,silver)") && !m("tier in (silver)") && !m("zone in (a)"));
        assert!(m("tier notin (silver)") && !m("tier notin (gold)") && m("zone notin (a)"));
        assert!(m("tier") && m("env") && !m("zone"));
        assert!(m("!zone") && !m("!tier"));
        assert!(m("env=") && m("env in ()") && !m("tier="));
        assert!(m("") && m("   "), "the empty selector selects everything");
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("tier in (gold", "missing ')'"),
            ("tier in gold", "expected '(' after 'in'"),
            ("tier gold", "expected one of =, ==, !=, in, notin"),
            ("tier>1", "'>' at character 5 is not supported"),
            ("tier<1", "not supported"),
            (
                "tier=gold!",
                "found '!' at character 10, expected ',' or the end",
            ),
            ("tier=gold,", "a requirement must follow the ','"),
            (",tier", "found ',' at character 1, expected a label key"),
            ("=gold", "expected a label key"),
            ("in=gold", "'in' and 'notin' are operators, not keys"),
            ("Bad_Prefix/x=1", "is not a label key"),
            ("-tier=1", "is not a label key"),
            ("tier=-gold", "\"-gold\" is not a valid label value"),
            ("tier in (ok,bad value)", "expected a value, ',' or ')'"),
            ("tier in (ok,-bad)", "\"-bad\" is not a valid label value"),
            ("!tier=gold", "'!key' takes no value"),
            ("tier=a b", "found \"b\" at character 8"),
            ("tier==(a)", "expected a value after '=='"),
            ("tier=\u{0}", "is not a valid label value"),
            ("tiér=1", "is not a label key"),
        ];
        for (input, want) in cases {
            let e = Selector::parse(input).unwrap_err();
            assert!(e.to_string().contains(want), "{input}: {e}");
            let v: ValidationError = e.into();
            assert_eq!(v.violations[0].field, "labelSelector");
        }
    }

    #[test]
    fn positions_count_characters() {
        let e = Selector::parse("é=1").unwrap_err();
        assert!(e.reason().contains("character 1"), "{e}");
        let e = Selector::parse("a=é,>").unwrap_err();
        assert!(e.reason().contains("value"), "{e}");
    }

    #[test]
    fn selectors_are_bounded() {
        let at_most: Vec<String> = (0..SELECTOR_MAX_REQUIREMENTS)
            .map(|i| format!("k{i}"))
            .collect();
        assert!(Selector::parse(&at_most.join(",")).is_ok());
        let over: Vec<String> = (0..=SELECTOR_MAX_REQUIREMENTS)
            .map(|i| format!("k{i}"))
            .collect();
        let e = Selector::parse(&over.join(",")).unwrap_err();
        assert!(e.reason().contains("at most 32 requirements"), "{e}");

        let long = format!("k in ({})", vec!["v"; 600].join(","));
        let e = Selector::parse(&long).unwrap_err();
        assert!(
            e.reason().contains("at most 1024 characters (got 1206)"),
            "{e}"
        );
        let fits = format!("k in ({})", vec!["v"; 500].join(","));
        assert_eq!(one(&fits).values(), ["v"]);

        let key = format!("{}=1", "k".repeat(64));
        assert!(
            Selector::parse(&key)
                .unwrap_err()
                .reason()
                .contains("1-63 characters")
        );
        let value = format!("k={}", "v".repeat(64));
        assert!(
            Selector::parse(&value)
                .unwrap_err()
                .reason()
                .contains("at most 63")
        );
    }
}
