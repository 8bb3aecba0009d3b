//! MLflow's search filter and `order_by` grammar, parsed into the store's [`Clause`] and
//! [`OrderKey`] records. Pure code: no IO, no SQL.
//!
//! ```text
//! filter  := clause ("AND" clause)*
//! clause  := entity comparator value
//! entity  := [prefix "."] key          prefix: metrics params tags attributes datasets (and aliases)
//! key     := word | `backticked` | "quoted"
//! value   := number | 'string' | "string" | "(" string ("," string)* ")"
//! order   := entity ["ASC" | "DESC"]
//! ```
//!
//! Keywords are case-insensitive. Which comparators and value kinds fit depends on the entity:
//! metrics and time attributes compare numbers, params, tags and other attributes compare
//! strings (`=`, `!=`, `LIKE`, `ILIKE`, `IN`, `NOT IN`).

use capstan_store::{Attribute, Clause, Comparator, Entity, Operand, OrderKey};

/// What the filter applies to: the two differ in their attributes and prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Runs,
    Experiments,
    /// Logged models, registered models and model versions.
    Models,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid search filter at character {at}: {message}")]
pub struct FilterError {
    pub at: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    /// A bare word (identifier, keyword or number) with the quoted key that may follow a dot.
    Word(String),
    Quoted {
        text: String,
        quote: char,
    },
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn error(at: usize, message: impl Into<String>) -> FilterError {
    FilterError {
        at,
        message: message.into(),
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '+' | '/' | ':')
}

/// Splits the text into tokens with their character offsets.
fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        match c {
            '(' => {
                tokens.push((start, Token::LParen));
                i += 1;
            }
            ')' => {
                tokens.push((start, Token::RParen));
                i += 1;
            }
            ',' => {
                tokens.push((start, Token::Comma));
                i += 1;
            }
            '\'' | '"' | '`' => {
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(&next) = chars.get(i) else {
                        return Err(error(start, format!("unterminated {c}quoted{c} text")));
                    };
                    i += 1;
                    if next == c {
                        // A doubled quote stands for the quote itself.
                        if chars.get(i) == Some(&c) {
                            text.push(c);
                            i += 1;
                            continue;
                        }
                        break;
                    }
                    text.push(next);
                }
                tokens.push((start, Token::Quoted { text, quote: c }));
            }
            '=' => {
                tokens.push((start, Token::Op("=")));
                i += if chars.get(i + 1) == Some(&'=') { 2 } else { 1 };
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                tokens.push((start, Token::Op("!=")));
                i += 2;
            }
            '<' | '>' => {
                let (op, len) = match (c, chars.get(i + 1)) {
                    ('<', Some('=')) => ("<=", 2),
                    ('>', Some('=')) => (">=", 2),
                    ('<', Some('>')) => ("!=", 2),
                    ('<', _) => ("<", 1),
                    _ => (">", 1),
                };
                i += len;
                tokens.push((start, Token::Op(op)));
            }
            c if is_word_char(c) => {
                let mut word = String::new();
                while let Some(&next) = chars.get(i) {
                    if !is_word_char(next) {
                        break;
                    }
                    word.push(next);
                    i += 1;
                }
                tokens.push((start, Token::Word(word)));
            }
            other => return Err(error(start, format!("unexpected character `{other}`"))),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<(usize, Token)>,
    pos: usize,
    end: usize,
    target: Target,
}

impl Parser {
    fn new(text: &str, target: Target) -> Result<Parser, FilterError> {
        Ok(Parser {
            tokens: tokenize(text)?,
            pos: 0,
            end: text.chars().count(),
            target,
        })
    }

    fn at(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |(at, _)| *at)
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        token
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn done(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    /// `prefix.key`, `prefix.`quoted``, or an attribute alone.
    fn entity(&mut self) -> Result<Entity, FilterError> {
        let at = self.at();
        let word = match self.next() {
            Some(Token::Word(word)) => word,
            Some(Token::Quoted { text, quote: '`' }) => text,
            _ => {
                return Err(error(
                    at,
                    "expected an entity such as metrics.loss or params.lr",
                ));
            }
        };
        let (prefix, rest) = match word.split_once('.') {
            Some((prefix, rest)) => (prefix.to_ascii_lowercase(), rest.to_owned()),
            None => (String::new(), word.clone()),
        };
        let kind = match prefix.as_str() {
            "metric" | "metrics" => Some("metric"),
            "param" | "params" | "parameter" | "parameters" => Some("param"),
            "tag" | "tags" => Some("tag"),
            "attribute" | "attributes" | "attr" | "run" => Some("attribute"),
            "dataset" | "datasets" => Some("dataset"),
            _ => None,
        };
        let Some(kind) = kind else {
            // No prefix: the whole word names an attribute.
            return self.attribute(&word, at).map(Entity::Attribute);
        };
        let key = if rest.is_empty() {
            match self.next() {
                Some(Token::Quoted {
                    text,
                    quote: '`' | '"',
                }) => text,
                _ => return Err(error(at, format!("expected a key after `{word}`"))),
            }
        } else {
            rest
        };
        if key.is_empty() {
            return Err(error(at, "a key must not be empty"));
        }
        match (kind, self.target) {
            ("metric", Target::Runs) => Ok(Entity::Metric(key)),
            ("param", Target::Runs | Target::Models) => Ok(Entity::Param(key)),
            ("tag", _) => Ok(Entity::Tag(key)),
            ("attribute", _) => self.attribute(&key, at).map(Entity::Attribute),
            ("dataset", Target::Runs) => match key.as_str() {
                "name" | "digest" | "context" => Ok(Entity::Dataset(key)),
                other => Err(error(
                    at,
                    format!("unknown dataset field `{other}`; use name, digest or context"),
                )),
            },
            (kind, Target::Experiments) => Err(error(
                at,
                format!("experiments cannot be searched by {kind}s"),
            )),
            (kind, Target::Models) => {
                Err(error(at, format!("models cannot be searched by {kind}s")))
            }
            (kind, Target::Runs) => Err(error(at, format!("unknown entity {kind}"))),
        }
    }

    fn attribute(&self, name: &str, at: usize) -> Result<Attribute, FilterError> {
        let attribute = match (self.target, name.to_ascii_lowercase().as_str()) {
            (Target::Runs, "run_id" | "run_uuid" | "id") => Attribute::RunId,
            (Target::Runs, "run_name" | "name") => Attribute::RunName,
            (Target::Runs, "status") => Attribute::Status,
            (Target::Runs, "user_id") => Attribute::UserId,
            (Target::Runs, "artifact_uri") => Attribute::ArtifactUri,
            (Target::Runs, "start_time" | "created") => Attribute::StartTime,
            (Target::Runs, "end_time") => Attribute::EndTime,
            (Target::Experiments, "name") => Attribute::Name,
            (Target::Experiments, "creation_time") => Attribute::CreationTime,
            (Target::Experiments, "last_update_time") => Attribute::LastUpdateTime,
            (Target::Experiments, "experiment_id") => Attribute::ExperimentId,
            (Target::Models, "name") => Attribute::Name,
            (Target::Models, "run_id" | "source_run_id") => Attribute::RunId,
            (Target::Models, "status" | "current_stage") => Attribute::Status,
            (Target::Models, "source_path" | "source") => Attribute::ArtifactUri,
            (Target::Models, "version_number" | "version") => Attribute::Version,
            (Target::Models, "experiment_id") => Attribute::ExperimentId,
            (Target::Models, "creation_timestamp" | "creation_time" | "creation_timestamp_ms") => {
                Attribute::CreationTime
            }
            (
                Target::Models,
                "last_updated_timestamp" | "last_update_time" | "last_updated_timestamp_ms",
            ) => Attribute::LastUpdateTime,
            (_, other) => return Err(error(at, format!("unknown attribute `{other}`"))),
        };
        Ok(attribute)
    }

    fn comparator(&mut self) -> Result<Comparator, FilterError> {
        let at = self.at();
        let comparator = match self.next() {
            Some(Token::Op("=")) => Comparator::Eq,
            Some(Token::Op("!=")) => Comparator::Ne,
            Some(Token::Op("<")) => Comparator::Lt,
            Some(Token::Op("<=")) => Comparator::Le,
            Some(Token::Op(">")) => Comparator::Gt,
            Some(Token::Op(">=")) => Comparator::Ge,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("like") => Comparator::Like,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("ilike") => Comparator::ILike,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("in") => Comparator::In,
            Some(Token::Word(w)) if w.eq_ignore_ascii_case("not") => {
                if !self.keyword("in") {
                    return Err(error(self.at(), "expected IN after NOT"));
                }
                self.pos += 1;
                Comparator::NotIn
            }
            _ => {
                return Err(error(
                    at,
                    "expected a comparator (=, !=, <, <=, >, >=, LIKE, ILIKE, IN)",
                ));
            }
        };
        Ok(comparator)
    }

    fn value(&mut self, numeric: bool, comparator: Comparator) -> Result<Operand, FilterError> {
        let at = self.at();
        if matches!(comparator, Comparator::In | Comparator::NotIn) {
            if numeric {
                return Err(error(at, "IN compares strings, not numbers"));
            }
            if self.next() != Some(Token::LParen) {
                return Err(error(at, "expected a parenthesised list after IN"));
            }
            let mut items = Vec::new();
            loop {
                let at = self.at();
                match self.next() {
                    Some(Token::Quoted {
                        text,
                        quote: '\'' | '"',
                    }) => items.push(text),
                    _ => return Err(error(at, "expected a quoted string in the list")),
                }
                let at = self.at();
                match self.next() {
                    Some(Token::Comma) => continue,
                    Some(Token::RParen) => break,
                    _ => return Err(error(at, "expected `,` or `)` in the list")),
                }
            }
            return Ok(Operand::List(items));
        }
        if numeric {
            if matches!(comparator, Comparator::Like | Comparator::ILike) {
                return Err(error(at, "LIKE and ILIKE compare strings, not numbers"));
            }
            return match self.next() {
                Some(Token::Word(word)) => word
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .map(Operand::Number)
                    .ok_or_else(|| error(at, format!("expected a number, got `{word}`"))),
                _ => Err(error(at, "expected a number")),
            };
        }
        if matches!(
            comparator,
            Comparator::Lt | Comparator::Le | Comparator::Gt | Comparator::Ge
        ) {
            return Err(error(
                at,
                "strings are compared with =, !=, LIKE, ILIKE or IN",
            ));
        }
        match self.next() {
            Some(Token::Quoted {
                text,
                quote: '\'' | '"',
            }) => Ok(Operand::Text(text)),
            _ => Err(error(at, "expected a quoted string")),
        }
    }

    fn clause(&mut self) -> Result<Clause, FilterError> {
        let entity = self.entity()?;
        let comparator = self.comparator()?;
        let numeric = match &entity {
            Entity::Metric(_) => true,
            Entity::Attribute(attribute) => attribute.is_numeric(),
            _ => false,
        };
        let value = self.value(numeric, comparator)?;
        Ok(Clause {
            entity,
            comparator,
            value,
        })
    }
}

/// Parses a filter; an empty or blank filter has no clauses.
pub fn parse_filter(text: &str, target: Target) -> Result<Vec<Clause>, FilterError> {
    let mut parser = Parser::new(text, target)?;
    let mut clauses = Vec::new();
    if parser.done() {
        return Ok(clauses);
    }
    loop {
        clauses.push(parser.clause()?);
        if parser.done() {
            return Ok(clauses);
        }
        if !parser.keyword("and") {
            return Err(error(parser.at(), "expected AND between clauses"));
        }
        parser.pos += 1;
    }
}

/// Parses one `order_by` entry: an entity and an optional direction (ascending by default).
pub fn parse_order(text: &str, target: Target) -> Result<OrderKey, FilterError> {
    let mut parser = Parser::new(text, target)?;
    let entity = parser.entity()?;
    if matches!(entity, Entity::Dataset(_)) {
        return Err(error(0, "results cannot be ordered by a dataset field"));
    }
    if target == Target::Experiments && !matches!(entity, Entity::Attribute(_)) {
        return Err(error(0, "experiments can only be ordered by an attribute"));
    }
    let ascending = if parser.keyword("desc") {
        parser.pos += 1;
        false
    } else {
        if parser.keyword("asc") {
            parser.pos += 1;
        }
        true
    };
    if !parser.done() {
        return Err(error(
            parser.at(),
            "expected ASC or DESC at the end of an order",
        ));
    }
    Ok(OrderKey { entity, ascending })
}

fn quote(text: &str, quote: char) -> String {
    let doubled: String = text
        .chars()
        .flat_map(|c| if c == quote { vec![c, c] } else { vec![c] })
        .collect();
    format!("{quote}{doubled}{quote}")
}

fn attribute_name(attribute: Attribute) -> &'static str {
    match attribute {
        Attribute::RunId => "run_id",
        Attribute::RunName => "run_name",
        Attribute::Status => "status",
        Attribute::UserId => "user_id",
        Attribute::ArtifactUri => "artifact_uri",
        Attribute::StartTime => "start_time",
        Attribute::EndTime => "end_time",
        Attribute::LifecycleStage => "lifecycle_stage",
        Attribute::ExperimentId => "experiment_id",
        Attribute::Name => "name",
        Attribute::CreationTime => "creation_time",
        Attribute::LastUpdateTime => "last_update_time",
        Attribute::Version => "version_number",
    }
}

/// Writes clauses back as filter text that [`parse_filter`] reads to the same clauses.
pub fn render_filter(clauses: &[Clause]) -> String {
    let rendered: Vec<String> = clauses
        .iter()
        .map(|clause| {
            let entity = match &clause.entity {
                Entity::Metric(key) => format!("metrics.{}", quote(key, '`')),
                Entity::Param(key) => format!("params.{}", quote(key, '`')),
                Entity::Tag(key) => format!("tags.{}", quote(key, '`')),
                Entity::Dataset(key) => format!("datasets.{key}"),
                Entity::Attribute(attribute) => {
                    format!("attributes.{}", attribute_name(*attribute))
                }
            };
            let comparator = match clause.comparator {
                Comparator::Eq => "=",
                Comparator::Ne => "!=",
                Comparator::Lt => "<",
                Comparator::Le => "<=",
                Comparator::Gt => ">",
                Comparator::Ge => ">=",
                Comparator::Like => "LIKE",
                Comparator::ILike => "ILIKE",
                Comparator::In => "IN",
                Comparator::NotIn => "NOT IN",
            };
            let value = match &clause.value {
                Operand::Number(n) => format!("{n:?}"),
                Operand::Text(text) => quote(text, '\''),
                Operand::List(items) => {
                    let items: Vec<String> = items.iter().map(|i| quote(i, '\'')).collect();
                    format!("({})", items.join(", "))
                }
            };
            format!("{entity} {comparator} {value}")
        })
        .collect();
    rendered.join(" AND ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn model_filters_take_the_registry_prompt_filter_and_reject_metrics() {
        let clauses = parse_filter(
            "name LIKE 'a%' AND tag.`mlflow.prompt.is_prompt` != 'true'",
            Target::Models,
        )
        .unwrap();
        assert_eq!(clauses[0].entity, Entity::Attribute(Attribute::Name));
        assert_eq!(
            clauses[1].entity,
            Entity::Tag("mlflow.prompt.is_prompt".to_owned())
        );
        assert_eq!(clauses[1].comparator, Comparator::Ne);
        let version = parse_filter("version_number > 1 AND run_id = 'x'", Target::Models).unwrap();
        assert_eq!(version[0].entity, Entity::Attribute(Attribute::Version));
        assert_eq!(version[0].value, Operand::Number(1.0));
        assert_eq!(version[1].entity, Entity::Attribute(Attribute::RunId));
        assert!(parse_filter("metrics.a > 1", Target::Models).is_err());
        assert!(parse_order("creation_timestamp DESC", Target::Models).is_ok());
    }

    use super::*;
    use proptest::prelude::*;

    fn runs(text: &str) -> Vec<Clause> {
        parse_filter(text, Target::Runs).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn clause(entity: Entity, comparator: Comparator, value: Operand) -> Clause {
        Clause {
            entity,
            comparator,
            value,
        }
    }

    #[test]
    fn parses_every_prefix_and_comparator() {
        assert_eq!(
            runs("metrics.rmse < 0.5 and params.lr = '0.1' AND tags.`mlflow.user` != \"x\""),
            vec![
                clause(
                    Entity::Metric("rmse".into()),
                    Comparator::Lt,
                    Operand::Number(0.5)
                ),
                clause(
                    Entity::Param("lr".into()),
                    Comparator::Eq,
                    Operand::Text("0.1".into())
                ),
                clause(
                    Entity::Tag("mlflow.user".into()),
                    Comparator::Ne,
                    Operand::Text("x".into())
                ),
            ]
        );
        assert_eq!(
            runs("attributes.status IN ('FINISHED', 'FAILED') AND run_name ILIKE '%Fox%'"),
            vec![
                clause(
                    Entity::Attribute(Attribute::Status),
                    Comparator::In,
                    Operand::List(vec!["FINISHED".into(), "FAILED".into()])
                ),
                clause(
                    Entity::Attribute(Attribute::RunName),
                    Comparator::ILike,
                    Operand::Text("%Fox%".into())
                ),
            ]
        );
        assert_eq!(
            runs(
                "tags.mlflow.runName LIKE 'a%' and attributes.start_time >= 10 and attributes.run_id not in ('a')"
            ),
            vec![
                clause(
                    Entity::Tag("mlflow.runName".into()),
                    Comparator::Like,
                    Operand::Text("a%".into())
                ),
                clause(
                    Entity::Attribute(Attribute::StartTime),
                    Comparator::Ge,
                    Operand::Number(10.0)
                ),
                clause(
                    Entity::Attribute(Attribute::RunId),
                    Comparator::NotIn,
                    Operand::List(vec!["a".into()])
                ),
            ]
        );
        assert_eq!(
            runs("metrics.\"my metric\" >= -1e3 AND datasets.name = 'iris'"),
            vec![
                clause(
                    Entity::Metric("my metric".into()),
                    Comparator::Ge,
                    Operand::Number(-1000.0)
                ),
                clause(
                    Entity::Dataset("name".into()),
                    Comparator::Eq,
                    Operand::Text("iris".into())
                ),
            ]
        );
        assert_eq!(runs("  "), vec![]);
    }

    #[test]
    fn registry_style_backticked_tag_filter_parses_for_experiments() {
        assert_eq!(
            parse_filter(
                "tag.`mlflow.prompt.is_prompt` != 'true'",
                Target::Experiments
            )
            .unwrap(),
            vec![clause(
                Entity::Tag("mlflow.prompt.is_prompt".into()),
                Comparator::Ne,
                Operand::Text("true".into())
            )]
        );
        assert_eq!(
            parse_filter(
                "name LIKE 'exp%' and creation_time > 5",
                Target::Experiments
            )
            .unwrap(),
            vec![
                clause(
                    Entity::Attribute(Attribute::Name),
                    Comparator::Like,
                    Operand::Text("exp%".into())
                ),
                clause(
                    Entity::Attribute(Attribute::CreationTime),
                    Comparator::Gt,
                    Operand::Number(5.0)
                ),
            ]
        );
    }

    #[test]
    fn rejects_malformed_filters_with_a_position() {
        for (text, at) in [
            ("metrics.rmse < 'x'", 15),
            ("params.lr > '1'", 12),
            ("metrics.rmse LIKE 1", 18),
            ("params.lr = 1", 12),
            ("foo.bar = 'x'", 0),
            ("metrics.a < 1 OR metrics.b < 2", 14),
            ("params.a = 'unterminated", 11),
            ("params.a IN 'x'", 12),
            ("params.a", 8),
            ("metrics.a < 1 AND", 17),
        ] {
            let err = parse_filter(text, Target::Runs).unwrap_err();
            assert_eq!(err.at, at, "{text}: {err}");
        }
        assert!(parse_filter("metrics.a < 1", Target::Experiments).is_err());
    }

    #[test]
    fn parses_orders() {
        assert_eq!(
            parse_order("metrics.`val loss` DESC", Target::Runs).unwrap(),
            OrderKey {
                entity: Entity::Metric("val loss".into()),
                ascending: false
            }
        );
        assert_eq!(
            parse_order("attributes.start_time", Target::Runs).unwrap(),
            OrderKey {
                entity: Entity::Attribute(Attribute::StartTime),
                ascending: true
            }
        );
        assert_eq!(
            parse_order("name asc", Target::Experiments).unwrap(),
            OrderKey {
                entity: Entity::Attribute(Attribute::Name),
                ascending: true
            }
        );
        assert!(parse_order("params.a sideways", Target::Runs).is_err());
        assert!(parse_order("tags.a", Target::Experiments).is_err());
    }

    fn key() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_. `'\"-]{1,12}"
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_%. '\"`-]{0,12}"
    }

    fn any_clause() -> impl Strategy<Value = Clause> {
        let string_cmp = prop_oneof![
            Just(Comparator::Eq),
            Just(Comparator::Ne),
            Just(Comparator::Like),
            Just(Comparator::ILike)
        ];
        let number_cmp = prop_oneof![
            Just(Comparator::Eq),
            Just(Comparator::Ne),
            Just(Comparator::Lt),
            Just(Comparator::Le),
            Just(Comparator::Gt),
            Just(Comparator::Ge)
        ];
        let list_cmp = prop_oneof![Just(Comparator::In), Just(Comparator::NotIn)];
        prop_oneof![
            (key(), number_cmp.clone(), -1e9f64..1e9).prop_map(|(k, c, n)| clause(
                Entity::Metric(k),
                c,
                Operand::Number(n)
            )),
            (key(), string_cmp.clone(), text()).prop_map(|(k, c, t)| clause(
                Entity::Param(k),
                c,
                Operand::Text(t)
            )),
            (key(), list_cmp, proptest::collection::vec(text(), 1..4))
                .prop_map(|(k, c, l)| clause(Entity::Tag(k), c, Operand::List(l))),
            (number_cmp, 0i64..1_000_000_000_000).prop_map(|(c, n)| clause(
                Entity::Attribute(Attribute::StartTime),
                c,
                Operand::Number(n as f64)
            )),
            (string_cmp, text()).prop_map(|(c, t)| clause(
                Entity::Attribute(Attribute::Status),
                c,
                Operand::Text(t)
            )),
        ]
    }

    proptest! {
        #[test]
        fn rendered_filters_parse_back(clauses in proptest::collection::vec(any_clause(), 0..5)) {
            let text = render_filter(&clauses);
            prop_assert_eq!(parse_filter(&text, Target::Runs), Ok(clauses), "{}", text);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,60}") {
            let _ = parse_filter(&text, Target::Runs);
            let _ = parse_order(&text, Target::Runs);
        }
    }
}
