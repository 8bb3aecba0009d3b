//! Conditions (`when:`): comparisons and `and`/`or`/`not` over parameters and step outputs.
//!
//! Grammar (precedence from loosest to tightest):
//! ```text
//! expr    := or
//! or      := and (("or" | "||") and)*
//! and     := not (("and" | "&&") not)*
//! not     := ("not" | "!") not | cmp
//! cmp     := operand (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") operand)?
//! operand := "{{ REF }}" | REF | NUMBER | 'str' | "str" | true | false | null | "(" expr ")"
//!          | "[" operand ("," operand)* "]"
//! ```
//! A bare `REF` is the same as `{{ REF }}` (`params.x > 1`).

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{Pos, Value};
use crate::template::Ref;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Lit(Value),
    Ref(Ref),
    List(Vec<Node>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
}

/// A parsed condition. It serialises as its source text; `pos` (where it appears in its file) is
/// not serialised and takes no part in equality.
#[derive(Clone, Debug)]
pub struct Expr {
    source: String,
    root: Node,
    pos: Pos,
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    /// Byte offset in the expression source (0 for evaluation errors).
    pub offset: usize,
    pub message: String,
}

impl Expr {
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn with_pos(mut self, pos: Pos) -> Expr {
        self.pos = pos;
        self
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }

    pub fn root(&self) -> &Node {
        &self.root
    }

    pub fn refs(&self) -> Vec<&Ref> {
        fn walk<'a>(n: &'a Node, out: &mut Vec<&'a Ref>) {
            match n {
                Node::Lit(_) => {}
                Node::Ref(r) => out.push(r),
                Node::List(xs) => xs.iter().for_each(|x| walk(x, out)),
                Node::Not(x) => walk(x, out),
                Node::And(a, b) | Node::Or(a, b) | Node::Cmp(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::In => "in",
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// Prints a node in a form that [`Expr::parse`] reads back to the same node. Every compound
/// operand is parenthesised, so the printed text does not depend on precedence.
impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn child(n: &Node, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match n {
                Node::Lit(_) | Node::Ref(_) | Node::List(_) => write!(f, "{n}"),
                _ => write!(f, "({n})"),
            }
        }
        match self {
            Node::Lit(Value::String(s)) => write_quoted(s, f),
            Node::Lit(v) => write!(f, "{v}"),
            Node::Ref(r) => write!(f, "{{{{ {r} }}}}"),
            Node::List(xs) => {
                f.write_str("[")?;
                for (i, x) in xs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    child(x, f)?;
                }
                f.write_str("]")
            }
            Node::Not(x) => {
                f.write_str("not ")?;
                child(x, f)
            }
            Node::And(a, b) | Node::Or(a, b) => {
                child(a, f)?;
                f.write_str(if matches!(self, Node::And(..)) {
                    " and "
                } else {
                    " or "
                })?;
                child(b, f)
            }
            Node::Cmp(op, a, b) => {
                child(a, f)?;
                write!(f, " {op} ")?;
                child(b, f)
            }
        }
    }
}

fn write_quoted(s: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str("'")?;
    for c in s.chars() {
        match c {
            '\'' => f.write_str("\\'")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("'")
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Lit(Value),
    Ref(Ref),
    And,
    Or,
    Not,
    Cmp(CmpOp),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Lit(Value::String(s)) => write_quoted(s, f),
            Tok::Lit(v) => write!(f, "{v}"),
            Tok::Ref(r) => write!(f, "{r}"),
            Tok::And => f.write_str("and"),
            Tok::Or => f.write_str("or"),
            Tok::Not => f.write_str("not"),
            Tok::Cmp(op) => write!(f, "{op}"),
            Tok::LParen => f.write_str("("),
            Tok::RParen => f.write_str(")"),
            Tok::LBracket => f.write_str("["),
            Tok::RBracket => f.write_str("]"),
            Tok::Comma => f.write_str(","),
        }
    }
}

fn err(offset: usize, message: impl Into<String>) -> ExprError {
    ExprError {
        offset,
        message: message.into(),
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'
}

/// Splits a condition into tokens, each with the byte offset where it starts.
fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let c = src[i..].chars().next().unwrap_or(' ');
        if c.is_whitespace() {
            i += c.len_utf8();
            continue;
        }
        let start = i;
        let rest = &src[i..];
        let two = rest.get(..2).unwrap_or("");
        let tok = match two {
            "{{" => {
                let Some(end) = rest[2..].find("}}") else {
                    return Err(err(start, "unclosed `{{`: expected `}}`"));
                };
                let r = Ref::parse(&rest[2..2 + end]).map_err(|m| err(start, m))?;
                i += 2 + end + 2;
                Tok::Ref(r)
            }
            "==" | "!=" | "<=" | ">=" | "&&" | "||" => {
                i += 2;
                match two {
                    "==" => Tok::Cmp(CmpOp::Eq),
                    "!=" => Tok::Cmp(CmpOp::Ne),
                    "<=" => Tok::Cmp(CmpOp::Le),
                    ">=" => Tok::Cmp(CmpOp::Ge),
                    "&&" => Tok::And,
                    _ => Tok::Or,
                }
            }
            _ => match c {
                '<' | '>' | '!' | '(' | ')' | '[' | ']' | ',' => {
                    i += 1;
                    match c {
                        '<' => Tok::Cmp(CmpOp::Lt),
                        '>' => Tok::Cmp(CmpOp::Gt),
                        '!' => Tok::Not,
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '[' => Tok::LBracket,
                        ']' => Tok::RBracket,
                        _ => Tok::Comma,
                    }
                }
                '=' => return Err(err(start, "unexpected `=`: use `==` to compare")),
                '\'' | '"' => {
                    let (s, len) = lex_string(rest, c).map_err(|m| err(start, m))?;
                    i += len;
                    Tok::Lit(Value::String(s))
                }
                c if c.is_ascii_digit()
                    || (c == '-' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
                {
                    let len = rest
                        .char_indices()
                        .skip(1)
                        .find(|&(k, ch)| {
                            !(ch.is_ascii_alphanumeric()
                                || ch == '.'
                                || ch == '_'
                                || ((ch == '-' || ch == '+')
                                    && matches!(rest.as_bytes()[k - 1], b'e' | b'E')))
                        })
                        .map_or(rest.len(), |(k, _)| k);
                    let text = &rest[..len];
                    i += len;
                    Tok::Lit(
                        parse_number(text)
                            .ok_or_else(|| err(start, format!("invalid number `{text}`")))?,
                    )
                }
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let len = rest
                        .find(|ch: char| !is_word_char(ch))
                        .unwrap_or(rest.len());
                    let word = &rest[..len];
                    i += len;
                    match word {
                        "and" => Tok::And,
                        "or" => Tok::Or,
                        "not" => Tok::Not,
                        "in" => Tok::Cmp(CmpOp::In),
                        "true" => Tok::Lit(Value::Bool(true)),
                        "false" => Tok::Lit(Value::Bool(false)),
                        "null" => Tok::Lit(Value::Null),
                        _ => Tok::Ref(Ref::parse(word).map_err(|m| err(start, m))?),
                    }
                }
                other => return Err(err(start, format!("unexpected character `{other}`"))),
            },
        };
        out.push((tok, start));
    }
    Ok(out)
}

/// Reads a quoted string at the start of `rest`; returns its value and its length in bytes.
fn lex_string(rest: &str, quote: char) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = rest.char_indices().skip(1);
    while let Some((k, c)) = chars.next() {
        match c {
            c if c == quote => return Ok((out, k + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, c @ ('\\' | '\'' | '"'))) => out.push(c),
                Some((_, c)) => return Err(format!("unknown escape `\\{c}` in string")),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err(format!("unclosed string: expected `{quote}`"))
}

fn parse_number(text: &str) -> Option<Value> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Value::from(i));
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    let f = text
        .parse::<f64>()
        .ok()
        .filter(|f| looks_numeric && f.is_finite())?;
    serde_json::Number::from_f64(f).map(Value::Number)
}

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    at: usize,
    src: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(t, _)| t)
    }

    fn offset(&self) -> usize {
        self.toks.get(self.at).map_or(self.src.len(), |(_, o)| *o)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn unexpected(&self, wanted: &str) -> ExprError {
        match self.peek() {
            Some(t) => err(
                self.offset(),
                format!("unexpected `{t}`: expected {wanted}"),
            ),
            None => err(
                self.offset(),
                format!("unexpected end of condition: expected {wanted}"),
            ),
        }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let mut left = self.and()?;
        while self.eat(&Tok::Or) {
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.not()?;
        while self.eat(&Tok::And) {
            let right = self.not()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, ExprError> {
        if self.eat(&Tok::Not) {
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Node, ExprError> {
        let left = self.operand()?;
        let Some(Tok::Cmp(op)) = self.peek().cloned() else {
            return Ok(left);
        };
        self.at += 1;
        let right = self.operand()?;
        Ok(Node::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn operand(&mut self) -> Result<Node, ExprError> {
        let tok = self.peek().cloned();
        match tok {
            Some(Tok::Lit(v)) => {
                self.at += 1;
                Ok(Node::Lit(v))
            }
            Some(Tok::Ref(r)) => {
                self.at += 1;
                Ok(Node::Ref(r))
            }
            Some(Tok::LParen) => {
                self.at += 1;
                let inner = self.or()?;
                if !self.eat(&Tok::RParen) {
                    return Err(self.unexpected("`)`"));
                }
                Ok(inner)
            }
            Some(Tok::LBracket) => {
                self.at += 1;
                let mut items = Vec::new();
                if self.eat(&Tok::RBracket) {
                    return Ok(Node::List(items));
                }
                loop {
                    items.push(self.operand()?);
                    if self.eat(&Tok::RBracket) {
                        return Ok(Node::List(items));
                    }
                    if !self.eat(&Tok::Comma) {
                        return Err(self.unexpected("`,` or `]`"));
                    }
                }
            }
            _ => Err(self.unexpected("a value, a reference or `(`")),
        }
    }
}

impl Expr {
    /// Parses a condition (see the module documentation for the grammar).
    pub fn parse(src: &str) -> Result<Expr, ExprError> {
        let toks = lex(src)?;
        if toks.is_empty() {
            return Err(err(0, "empty condition"));
        }
        let mut p = Parser { toks, at: 0, src };
        let root = p.or()?;
        if p.peek().is_some() {
            return Err(p.unexpected("`and`, `or` or the end of the condition"));
        }
        Ok(Expr {
            source: src.to_string(),
            root,
            pos: Pos::default(),
        })
    }

    /// Evaluates the condition. `lookup` supplies the value of each reference.
    pub fn eval<E>(
        &self,
        mut lookup: impl FnMut(&Ref) -> Result<Value, E>,
    ) -> Result<bool, EvalError<E>> {
        eval_node(&self.root, &mut lookup).map(|v| truthy(&v))
    }
}

/// Why a condition could not be evaluated.
#[derive(Debug, PartialEq)]
pub enum EvalError<E> {
    /// The lookup of a reference failed.
    Lookup(E),
    /// The operands do not fit the operator, e.g. "cannot compare string `abc` with number 0.8".
    Type(String),
}

impl<E: fmt::Display> fmt::Display for EvalError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Lookup(e) => write!(f, "{e}"),
            EvalError::Type(m) => f.write_str(m),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for EvalError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EvalError::Lookup(e) => Some(e),
            EvalError::Type(_) => None,
        }
    }
}

fn eval_node<E>(
    n: &Node,
    lookup: &mut impl FnMut(&Ref) -> Result<Value, E>,
) -> Result<Value, EvalError<E>> {
    Ok(match n {
        Node::Lit(v) => v.clone(),
        Node::Ref(r) => lookup(r).map_err(EvalError::Lookup)?,
        Node::List(xs) => Value::Array(
            xs.iter()
                .map(|x| eval_node(x, lookup))
                .collect::<Result<_, _>>()?,
        ),
        Node::Not(x) => Value::Bool(!truthy(&eval_node(x, lookup)?)),
        Node::And(a, b) => {
            Value::Bool(truthy(&eval_node(a, lookup)?) && truthy(&eval_node(b, lookup)?))
        }
        Node::Or(a, b) => {
            Value::Bool(truthy(&eval_node(a, lookup)?) || truthy(&eval_node(b, lookup)?))
        }
        Node::Cmp(op, a, b) => {
            let (a, b) = (eval_node(a, lookup)?, eval_node(b, lookup)?);
            Value::Bool(compare(*op, &a, &b).map_err(EvalError::Type)?)
        }
    })
}

/// The truth of a lone operand: bools as they are, `"true"`/`"false"` strings, non-zero numbers,
/// non-empty strings, lists and maps.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => true,
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(xs) => !xs.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// A number, or a string that is the text of a number (output parameters are often text).
enum Num {
    Int(i64),
    Float(f64),
}

fn as_num(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .map(Num::Int)
            .or_else(|| n.as_f64().map(Num::Float)),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>().ok().map(Num::Int).or_else(|| {
                t.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Num::Float)
            })
        }
        _ => None,
    }
}

fn cmp_num(a: &Num, b: &Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(y)),
        (Num::Int(x), Num::Float(y)) => (*x as f64).partial_cmp(y),
        (Num::Float(x), Num::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(y),
    }
}

/// How a value is named in a type error: its kind, then the value.
pub(crate) fn describe(v: &Value) -> String {
    fn clip(s: &str) -> String {
        if s.chars().count() > 60 {
            format!("{}...", s.chars().take(57).collect::<String>())
        } else {
            s.to_string()
        }
    }
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("bool {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) => format!("string `{}`", clip(s)),
        Value::Array(_) => format!("list {}", clip(&v.to_string())),
        Value::Object(_) => format!("map {}", clip(&v.to_string())),
    }
}

/// Equality across JSON values, lenient where text stands for a number or a bool.
fn loose_eq(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (Value::Number(_), Value::Number(_) | Value::String(_))
        | (Value::String(_), Value::Number(_)) => {
            matches!((as_num(a), as_num(b)), (Some(x), Some(y)) if cmp_num(&x, &y) == Some(Ordering::Equal))
        }
        (Value::Bool(x), Value::String(s)) | (Value::String(s), Value::Bool(x)) => {
            let t = s.trim();
            (t.eq_ignore_ascii_case("true") && *x) || (t.eq_ignore_ascii_case("false") && !*x)
        }
        _ => false,
    }
}

fn compare(op: CmpOp, a: &Value, b: &Value) -> Result<bool, String> {
    let ordering = |a: &Value, b: &Value| -> Result<Ordering, String> {
        let mismatch = || format!("cannot compare {} with {}", describe(a), describe(b));
        match (a, b) {
            (Value::String(x), Value::String(y)) => Ok(x.cmp(y)),
            (Value::Number(_) | Value::String(_), Value::Number(_) | Value::String(_)) => {
                match (as_num(a), as_num(b)) {
                    (Some(x), Some(y)) => cmp_num(&x, &y).ok_or_else(mismatch),
                    _ => Err(mismatch()),
                }
            }
            (Value::Bool(x), Value::Bool(y)) => Ok(x.cmp(y)),
            _ => Err(mismatch()),
        }
    };
    Ok(match op {
        CmpOp::Eq => loose_eq(a, b),
        CmpOp::Ne => !loose_eq(a, b),
        CmpOp::Lt => ordering(a, b)?.is_lt(),
        CmpOp::Le => ordering(a, b)?.is_le(),
        CmpOp::Gt => ordering(a, b)?.is_gt(),
        CmpOp::Ge => ordering(a, b)?.is_ge(),
        CmpOp::In => match b {
            Value::Array(xs) => xs.iter().any(|x| loose_eq(a, x)),
            Value::String(s) => match a {
                Value::String(needle) => s.contains(needle.as_str()),
                Value::Number(n) => s.contains(&n.to_string()),
                _ => {
                    return Err(format!(
                        "cannot look for {} in {}",
                        describe(a),
                        describe(b)
                    ));
                }
            },
            Value::Object(m) => match a {
                Value::String(key) => m.contains_key(key),
                _ => {
                    return Err(format!(
                        "cannot look for {} in {}",
                        describe(a),
                        describe(b)
                    ));
                }
            },
            _ => {
                return Err(format!(
                    "`in` needs a list, a string or a map on its right, got {}",
                    describe(b)
                ));
            }
        },
    })
}

impl Serialize for Expr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Expr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Expr, D::Error> {
        let s = String::deserialize(d)?;
        Expr::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn eval_with(src: &str, vars: &[(&str, Value)]) -> Result<bool, EvalError<String>> {
        let expr = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        expr.eval(|r| {
            let key = r.to_string();
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.clone())
                .ok_or(format!("no value for `{key}`"))
        })
    }

    fn holds(src: &str, vars: &[(&str, Value)]) -> bool {
        eval_with(src, vars).unwrap_or_else(|e| panic!("{src}: {e}"))
    }

    fn parse_err(src: &str) -> (usize, String) {
        let e = Expr::parse(src).unwrap_err();
        (e.offset, e.message)
    }

    #[test]
    fn precedence_is_or_then_and_then_not() {
        let e = Expr::parse("a.b or {{ params.x }} and not params.y == 1").unwrap_err();
        assert_eq!(e.offset, 0, "{}", e.message);
        let e = Expr::parse("item or params.x && !params.y == 1").unwrap();
        assert_eq!(
            e.root().to_string(),
            "{{ item }} or ({{ params.x }} and (not ({{ params.y }} == 1)))"
        );
        let e = Expr::parse("(item or params.x) and params.y in [1, 'a', null]").unwrap();
        assert_eq!(
            e.root().to_string(),
            "({{ item }} or {{ params.x }}) and ({{ params.y }} in [1, 'a', null])"
        );
        let refs: Vec<String> = e.refs().iter().map(|r| r.to_string()).collect();
        assert_eq!(refs, ["item", "params.x", "params.y"]);
    }

    #[test]
    fn syntax_errors_point_at_the_offending_token() {
        assert_eq!(
            parse_err("1 = 1"),
            (2, "unexpected `=`: use `==` to compare".into())
        );
        assert_eq!(
            parse_err("{{ params.x > 1"),
            (0, "unclosed `{{`: expected `}}`".into())
        );
        assert_eq!(
            parse_err("params.x >"),
            (
                10,
                "unexpected end of condition: expected a value, a reference or `(`".into()
            )
        );
        assert_eq!(
            parse_err("(1 == 1"),
            (7, "unexpected end of condition: expected `)`".into())
        );
        assert_eq!(
            parse_err("1 < 2 < 3"),
            (
                6,
                "unexpected `<`: expected `and`, `or` or the end of the condition".into()
            )
        );
        assert_eq!(
            parse_err("'abc"),
            (0, "unclosed string: expected `'`".into())
        );
        assert_eq!(parse_err("  "), (0, "empty condition".into()));
        assert_eq!(parse_err("1 == $"), (5, "unexpected character `$`".into()));
        let (offset, message) = parse_err("x > 1");
        assert_eq!(offset, 0);
        assert!(message.starts_with("unknown reference `x`"), "{message}");
    }

    #[test]
    fn numbers_compare_numerically_even_as_text() {
        assert!(holds(
            "{{ steps.pick.outputs.best }} > 0.8",
            &[("steps.pick.outputs.best", json!(0.93))]
        ));
        assert!(holds(
            "{{ steps.pick.outputs.best }} > 0.8",
            &[("steps.pick.outputs.best", json!("0.93\n"))]
        ));
        assert!(holds("params.n >= 2.0", &[("params.n", json!(2))]));
        assert!(holds("params.n == 2.0", &[("params.n", json!(2))]));
        assert!(holds("params.n == '2'", &[("params.n", json!(2))]));
        assert!(!holds("params.n != 2", &[("params.n", json!(2.0))]));
        assert!(holds("-1 < 1e3", &[]));
        assert!(holds("9007199254740993 > 9007199254740992", &[]));
    }

    #[test]
    fn strings_compare_lexicographically() {
        assert!(holds("params.s < 'b'", &[("params.s", json!("abc"))]));
        assert!(holds("'10' < '9'", &[]));
        assert!(holds(
            "params.s == \"it's\"",
            &[("params.s", json!("it's"))]
        ));
    }

    #[test]
    fn mismatched_types_are_errors_that_name_both_sides() {
        let err = eval_with(
            "{{ steps.pick.outputs.best }} > 0.8",
            &[("steps.pick.outputs.best", json!("abc"))],
        );
        assert_eq!(
            err,
            Err(EvalError::Type(
                "cannot compare string `abc` with number 0.8".into()
            ))
        );
        assert_eq!(
            eval_with("true < [1]", &[]),
            Err(EvalError::Type(
                "cannot compare bool true with list [1]".into()
            ))
        );
        assert_eq!(
            eval_with("1 in 3", &[]),
            Err(EvalError::Type(
                "`in` needs a list, a string or a map on its right, got number 3".into()
            ))
        );
        assert_eq!(
            eval_with("params.x", &[]),
            Err(EvalError::Lookup("no value for `params.x`".into()))
        );
        assert_eq!(
            eval_with("params.x", &[]).unwrap_err().to_string(),
            "no value for `params.x`"
        );
    }

    #[test]
    fn equality_works_on_any_json_value() {
        assert!(holds(
            "params.xs == [1, 'a']",
            &[("params.xs", json!([1, "a"]))]
        ));
        assert!(holds(
            "params.m != params.n",
            &[("params.m", json!({"a": 1})), ("params.n", json!({"a": 2}))]
        ));
        assert!(holds("params.b == true", &[("params.b", json!("true"))]));
        assert!(holds("params.z == null", &[("params.z", Value::Null)]));
        assert!(!holds("'a' == 1", &[]));
    }

    #[test]
    fn membership_in_lists_strings_and_maps() {
        assert!(holds("params.x in [1, 2]", &[("params.x", json!(2.0))]));
        assert!(!holds("3 in params.xs", &[("params.xs", json!([1, 2]))]));
        assert!(holds("'ell' in 'hello'", &[]));
        assert!(holds("'a' in params.m", &[("params.m", json!({"a": 1}))]));
        assert!(holds("not 'z' in 'hello'", &[]));
    }

    #[test]
    fn a_lone_operand_is_judged_by_truthiness() {
        for (v, want) in [
            (json!(true), true),
            (json!(false), false),
            (json!("true"), true),
            (json!("false"), false),
            (json!("False\n"), false),
            (json!("x"), true),
            (json!(""), false),
            (json!(0), false),
            (json!(0.5), true),
            (json!([]), false),
            (json!([0]), true),
            (json!({}), false),
            (Value::Null, false),
        ] {
            assert_eq!(holds("params.v", &[("params.v", v.clone())]), want, "{v}");
            assert_eq!(holds("!params.v", &[("params.v", v.clone())]), !want, "{v}");
        }
        assert!(holds(
            "params.a and params.b or false",
            &[("params.a", json!(1)), ("params.b", json!("yes"))]
        ));
    }

    #[test]
    fn and_or_short_circuit() {
        // The right side is never looked up, so its missing value is no error.
        assert!(!holds("false and params.missing", &[]));
        assert!(holds("true or params.missing", &[]));
    }

    #[test]
    fn serde_keeps_the_source() {
        let e = Expr::parse("{{ params.x }} > 1").unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json, json!("{{ params.x }} > 1"));
        assert_eq!(serde_json::from_value::<Expr>(json).unwrap(), e);
        assert!(serde_json::from_value::<Expr>(json!("1 <")).is_err());
    }

    fn arb_ref() -> impl Strategy<Value = Ref> {
        let name = "[a-z_][a-z0-9_-]{0,6}";
        prop_oneof![
            name.prop_map(Ref::Param),
            (name, name).prop_map(|(step, output)| Ref::StepOutput { step, output }),
            name.prop_map(Ref::Output),
            name.prop_map(Ref::Input),
            prop::collection::vec(name, 0..3).prop_map(Ref::Item),
            prop::sample::select(vec!["status", "id", "pipeline"]).prop_map(|f| Ref::Run(f.into())),
            prop::sample::select(vec!["name", "attempt", "index"])
                .prop_map(|f| Ref::Task(f.into())),
        ]
    }

    fn arb_operand() -> impl Strategy<Value = Node> {
        let lit = prop_oneof![
            any::<i64>().prop_map(|i| Node::Lit(json!(i))),
            (-1e12f64..1e12).prop_map(|f| Node::Lit(json!(f))),
            any::<bool>().prop_map(|b| Node::Lit(json!(b))),
            Just(Node::Lit(Value::Null)),
            ".{0,8}".prop_map(|s| Node::Lit(Value::String(s))),
            arb_ref().prop_map(Node::Ref),
        ];
        lit.prop_recursive(2, 8, 4, |inner| {
            prop::collection::vec(inner, 0..4).prop_map(Node::List)
        })
    }

    fn arb_node() -> impl Strategy<Value = Node> {
        let ops = prop::sample::select(vec![
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
            CmpOp::In,
        ]);
        let leaf = prop_oneof![
            arb_operand(),
            (ops, arb_operand(), arb_operand()).prop_map(|(op, a, b)| Node::Cmp(
                op,
                Box::new(a),
                Box::new(b)
            )),
        ];
        leaf.prop_recursive(4, 32, 2, |inner| {
            prop_oneof![
                inner.clone().prop_map(|x| Node::Not(Box::new(x))),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| Node::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner).prop_map(|(a, b)| Node::Or(Box::new(a), Box::new(b))),
            ]
        })
    }

    proptest! {
        #[test]
        fn printing_then_parsing_gives_the_same_tree(node in arb_node()) {
            let text = node.to_string();
            let parsed = Expr::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(parsed.root(), &node, "{}", text);
        }

        #[test]
        fn arbitrary_text_never_panics(src in ".{0,40}") {
            if let Ok(e) = Expr::parse(&src) {
                let _ = e.eval(|_| -> Result<Value, ()> { Ok(json!("1")) });
            }
        }

        #[test]
        fn token_soup_never_panics(parts in prop::collection::vec(prop::sample::select(vec![
            "params.x", "{{ item }}", "(", ")", "[", "]", ",", "and", "or", "not", "!", "==", "<", "in",
            "1", "-2.5", "'s'", "\"t\"", "true", "null", "&&", "||", "{{", "}}", "-", "=", "1e",
        ]), 0..12)) {
            let src = parts.join(" ");
            if let Ok(e) = Expr::parse(&src) {
                let _ = e.eval(|_| -> Result<Value, ()> { Ok(json!([1])) });
            }
        }
    }
}
