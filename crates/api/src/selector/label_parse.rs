//! The `?labelSelector=` string syntax, lexed and parsed as upstream's `labels.Parse` does.
//!
//! ```text
//! <selector>    ::= <requirement> | <requirement> "," <selector>
//! <requirement> ::= ["!"] KEY [ <set-based> | <exact> ]
//! <set-based>   ::= ("in" | "notin") "(" VALUE ("," VALUE)* ")"
//! <exact>       ::= ("=" | "==" | "!=" | ">" | "<") VALUE
//! ```
//!
//! Blanks (space, tab, CR, LF) separate tokens anywhere. Keys and values are any run of bytes
//! other than blanks and `=!(),<>`, checked afterwards as label syntax. `in` and `notin` are
//! keywords only where an operator is expected, so `in=notin` is a valid requirement. Empty
//! values are allowed (`x=`, `x in (,a)`). Upstream's lexer uses a zero byte as its end-of-input
//! mark, so a NUL in the input ends it or is swallowed depending on where it falls; the lexer
//! here reads bytes the same way so that exactly the same strings are accepted.

use std::collections::BTreeSet;

use super::invalid::{BadValue, InvalidValue, InvalidValues};
use super::label::{Expected, Operator, Requirement, SelectorError};
use super::syntax::validate_label_key;

/// Parses a selector string into its requirements, in the order written.
pub(super) fn parse(selector: &str) -> Result<Vec<Requirement>, SelectorError> {
    let mut parser = Parser { items: scan(selector), position: 0 };
    parser.parse()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    End,
    Identifier,
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
    GreaterThan,
    LessThan,
    In,
    NotIn,
    OpenParen,
    CloseParen,
    Comma,
}

struct Lexer<'a> {
    input: &'a str,
    position: usize,
}

fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_symbol(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

impl<'a> Lexer<'a> {
    /// The next byte, or 0 at the end (and at a NUL, which therefore also ends the input).
    fn read(&mut self) -> u8 {
        match self.input.as_bytes().get(self.position) {
            Some(&b) => {
                self.position += 1;
                b
            }
            None => 0,
        }
    }

    /// Steps back over the byte just read; only called after reading a non-zero byte.
    fn unread(&mut self) {
        self.position -= 1;
    }

    fn next_token(&mut self) -> (Token, &'a str) {
        let mut b = self.read();
        while is_blank(b) {
            b = self.read();
        }
        if b == 0 {
            return (Token::End, "");
        }
        self.unread();
        if is_symbol(b) { self.symbol() } else { self.word() }
    }

    /// An operator or punctuation; `!=` and `==` are the only two-byte symbols.
    fn symbol(&mut self) -> (Token, &'a str) {
        let start = self.position;
        let first = self.read();
        let second = self.read();
        let token = match (first, second) {
            (b'!', b'=') => Token::NotEquals,
            (b'=', b'=') => Token::DoubleEquals,
            (first, second) => {
                if second != 0 {
                    self.unread();
                }
                match first {
                    b'!' => Token::Not,
                    b'=' => Token::Equals,
                    b'>' => Token::GreaterThan,
                    b'<' => Token::LessThan,
                    b'(' => Token::OpenParen,
                    b')' => Token::CloseParen,
                    _ => Token::Comma,
                }
            }
        };
        let len = if matches!(token, Token::NotEquals | Token::DoubleEquals) { 2 } else { 1 };
        (token, &self.input[start..start + len])
    }

    /// A key, a value, or one of the keywords `in` and `notin`.
    fn word(&mut self) -> (Token, &'a str) {
        let start = self.position;
        let end = loop {
            let at = self.position;
            let b = self.read();
            if b == 0 {
                break at;
            }
            if is_symbol(b) || is_blank(b) {
                self.unread();
                break at;
            }
        };
        // Words end before an ASCII byte or at the end, so the slice is on char boundaries.
        let word = &self.input[start..end];
        let token = match word {
            "in" => Token::In,
            "notin" => Token::NotIn,
            _ => Token::Identifier,
        };
        (token, word)
    }
}

fn scan(input: &str) -> Vec<(Token, &str)> {
    let mut lexer = Lexer { input, position: 0 };
    let mut items = Vec::new();
    loop {
        let item = lexer.next_token();
        items.push(item);
        if item.0 == Token::End {
            return items;
        }
    }
}

/// Whether `in` and `notin` are read as operators (only right after a key) or as values.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    Operator,
    Values,
}

struct Parser<'a> {
    /// Always ends with a `Token::End`.
    items: Vec<(Token, &'a str)>,
    position: usize,
}

impl<'a> Parser<'a> {
    fn lookahead(&self, context: Context) -> (Token, &'a str) {
        let (token, literal) = self.items[self.position.min(self.items.len() - 1)];
        match token {
            Token::In | Token::NotIn if context == Context::Values => (Token::Identifier, literal),
            _ => (token, literal),
        }
    }

    fn consume(&mut self, context: Context) -> (Token, &'a str) {
        let item = self.lookahead(context);
        self.position += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (token, literal) = self.lookahead(Context::Values);
            match token {
                Token::Identifier | Token::Not => {
                    requirements.push(self.requirement()?);
                    match self.consume(Context::Values) {
                        (Token::End, _) => return Ok(requirements),
                        (Token::Comma, _) => {
                            let (next, next_literal) = self.lookahead(Context::Values);
                            if !matches!(next, Token::Identifier | Token::Not) {
                                return Err(unexpected(next_literal, Expected::IdentifierAfterComma));
                            }
                        }
                        (_, literal) => return Err(unexpected(literal, Expected::CommaOrEnd)),
                    }
                }
                Token::End => return Ok(requirements),
                _ => return Err(unexpected(literal, Expected::RequirementStart)),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, unary) = self.key_and_unary_operator()?;
        let (operator, values) = match unary {
            Some(operator) => (operator, BTreeSet::new()),
            None => {
                let operator = self.operator()?;
                let values = match operator {
                    Operator::In | Operator::NotIn => self.value_set()?,
                    _ => self.exact_value()?,
                };
                (operator, values)
            }
        };
        Requirement::new(key, operator, values.into_iter().collect())
            .map_err(|errors| SelectorError::RequirementInvalid { errors })
    }

    /// Reads `[!]KEY`; the operator is Exists when the requirement ends after the key,
    /// DoesNotExist after `!` (whatever follows), and otherwise still to be read.
    fn key_and_unary_operator(&mut self) -> Result<(String, Option<Operator>), SelectorError> {
        let mut operator = None;
        let (mut token, mut literal) = self.consume(Context::Values);
        if token == Token::Not {
            operator = Some(Operator::DoesNotExist);
            (token, literal) = self.consume(Context::Values);
        }
        if token != Token::Identifier {
            return Err(in_requirement(literal, Expected::Identifier));
        }
        let key_errors = validate_label_key(literal);
        if !key_errors.is_empty() {
            // Upstream reports this one with a nil field path, which prints as "<nil>".
            let errors = InvalidValues(vec![InvalidValue {
                field: "<nil>".into(),
                value: BadValue::String(literal.into()),
                detail: key_errors.join("; "),
            }]);
            return Err(SelectorError::RequirementInvalid { errors });
        }
        let (next, _) = self.lookahead(Context::Values);
        if operator.is_none() && matches!(next, Token::End | Token::Comma) {
            operator = Some(Operator::Exists);
        }
        Ok((literal.to_owned(), operator))
    }

    fn operator(&mut self) -> Result<Operator, SelectorError> {
        let (token, literal) = self.consume(Context::Operator);
        Ok(match token {
            Token::In => Operator::In,
            Token::NotIn => Operator::NotIn,
            Token::Equals => Operator::Equals,
            Token::DoubleEquals => Operator::DoubleEquals,
            Token::NotEquals => Operator::NotEquals,
            Token::GreaterThan => Operator::GreaterThan,
            Token::LessThan => Operator::LessThan,
            _ => return Err(in_requirement(literal, Expected::Operator)),
        })
    }

    /// `(a,b,...)`; `()` is the set holding the empty value, and empty items are values too.
    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (token, literal) = self.consume(Context::Values);
        if token != Token::OpenParen {
            return Err(in_requirement(literal, Expected::OpenParen));
        }
        let (token, literal) = self.lookahead(Context::Values);
        match token {
            Token::Identifier | Token::Comma => {
                let values = self.value_list()?;
                // value_list only returns with `)` next.
                self.consume(Context::Values);
                Ok(values)
            }
            Token::CloseParen => {
                self.consume(Context::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(in_requirement(literal, Expected::ValueOrCloseParen)),
        }
    }

    /// The comma-separated items inside parentheses, up to (not including) `)`.
    fn value_list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let mut values = BTreeSet::new();
        loop {
            let (token, literal) = self.consume(Context::Values);
            match token {
                Token::Identifier => {
                    values.insert(literal.to_owned());
                    let (next, next_literal) = self.lookahead(Context::Values);
                    match next {
                        Token::Comma => continue,
                        Token::CloseParen => return Ok(values),
                        _ => return Err(in_requirement(next_literal, Expected::CommaOrCloseParen)),
                    }
                }
                Token::Comma => {
                    // A comma with nothing before it, after it, or between two commas
                    // delimits an empty value.
                    if values.is_empty() {
                        values.insert(String::new());
                    }
                    match self.lookahead(Context::Values).0 {
                        Token::CloseParen => {
                            values.insert(String::new());
                            return Ok(values);
                        }
                        Token::Comma => {
                            values.insert(String::new());
                        }
                        _ => {}
                    }
                }
                _ => return Err(in_requirement(literal, Expected::CommaOrIdentifier)),
            }
        }
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`; nothing there means the empty value.
    fn exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if matches!(self.lookahead(Context::Values).0, Token::End | Token::Comma) {
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.consume(Context::Values) {
            (Token::Identifier, literal) => Ok(BTreeSet::from([literal.to_owned()])),
            (_, literal) => Err(in_requirement(literal, Expected::Identifier)),
        }
    }
}

fn unexpected(found: &str, expected: Expected) -> SelectorError {
    SelectorError::UnexpectedToken { found: found.into(), expected }
}

fn in_requirement(found: &str, expected: Expected) -> SelectorError {
    SelectorError::RequirementUnexpectedToken { found: found.into(), expected }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::LabelSelector;

    fn tokens(input: &str) -> Vec<Token> {
        scan(input).into_iter().map(|(t, _)| t).collect()
    }

    fn error(input: &str) -> String {
        LabelSelector::parse(input).unwrap_err().to_string()
    }

    #[test]
    fn lexer_recognises_every_token() {
        use Token::*;
        let cases: &[(&str, Token)] = &[
            ("", End),
            (",", Comma),
            ("notin", NotIn),
            ("in", In),
            ("=", Equals),
            ("==", DoubleEquals),
            (">", GreaterThan),
            ("<", LessThan),
            ("!=", NotEquals),
            ("(", OpenParen),
            (")", CloseParen),
            ("!", Not),
            ("~", Identifier),
            ("||", Identifier),
            ("key", Identifier),
        ];
        for (input, token) in cases {
            assert_eq!(scan(input)[0], (*token, *input), "{input:?}");
        }
    }

    #[test]
    fn lexer_splits_on_blanks_and_symbols() {
        use Token::*;
        assert_eq!(tokens("key in ( value )"), [Identifier, In, OpenParen, Identifier, CloseParen, End]);
        assert_eq!(tokens("key notin ( value )"), [Identifier, NotIn, OpenParen, Identifier, CloseParen, End]);
        assert_eq!(
            tokens("key in ( value1, value2 )"),
            [Identifier, In, OpenParen, Identifier, Comma, Identifier, CloseParen, End]
        );
        assert_eq!(tokens("key"), [Identifier, End]);
        assert_eq!(tokens("!key"), [Not, Identifier, End]);
        assert_eq!(tokens("()"), [OpenParen, CloseParen, End]);
        assert_eq!(tokens("x in (),y"), [Identifier, In, OpenParen, CloseParen, Comma, Identifier, End]);
        assert_eq!(
            tokens("== != (), = notin"),
            [DoubleEquals, NotEquals, OpenParen, CloseParen, Comma, Equals, NotIn, End]
        );
        assert_eq!(tokens("key>2"), [Identifier, GreaterThan, Identifier, End]);
        assert_eq!(tokens("key<1"), [Identifier, LessThan, Identifier, End]);
        assert_eq!(tokens("===!=!"), [DoubleEquals, Equals, NotEquals, Not, End]);
        assert_eq!(tokens("\tx\r\n=\ny "), [Identifier, Equals, Identifier, End]);
    }

    #[test]
    fn nul_bytes_are_read_as_upstream_lexer_reads_them() {
        // Between tokens a NUL ends the input; right after a word or symbol it is swallowed.
        assert_eq!(LabelSelector::parse("x= \0garbage").unwrap().to_string(), "x=");
        assert_eq!(LabelSelector::parse("x=\0y").unwrap().to_string(), "x=y");
        assert_eq!(error("x=a\0b"), "found 'b', expected: ',' or 'end of string'");
    }

    #[test]
    fn upstream_good_strings_round_trip_without_blanks() {
        for input in ["x=a,y=b,z=c", "", "x!=a,y=b", "x=", "x= ", "x=,z= ", "x= ,z= ", "!x", "x>1", "x>1,z<5"] {
            let selector = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
            assert_eq!(selector.to_string(), input.replace(' ', ""), "{input:?}");
        }
    }

    #[test]
    fn upstream_bad_strings_are_rejected() {
        for input in [
            "x=a||y=b", "x==a==b", "!x=a", "x<a", "x=a,", ",x=a", "x in", "x in (a", "x in a", "x=(a)", "x,,y", "=a",
            "x notin",
        ] {
            assert!(LabelSelector::parse(input).is_err(), "{input:?} should fail");
        }
    }

    #[test]
    fn set_syntax_accepts_empty_items_and_keywords_as_values() {
        let parsed = |s: &str| LabelSelector::parse(s).unwrap().to_string();
        assert_eq!(parsed("x in (foo,,baz),y,z notin ()"), "x in (,baz,foo),y,z notin ()");
        assert_eq!(parsed("x in (,a)"), "x in (,a)");
        assert_eq!(parsed("x in (a,)"), "x in (,a)");
        assert_eq!(parsed("x in (,)"), "x in ()");
        assert_eq!(parsed("x in (in,notin)"), "x in (in,notin)");
        assert_eq!(parsed("in in (in)"), "in in (in)");
        assert_eq!(parsed("notin=in"), "notin=in");
        assert_eq!(parsed("x in (b,a,b)"), "x in (a,b)");
        assert_eq!(LabelSelector::parse("x in (b,a,b)").unwrap().requirements()[0].values(), ["a", "b"]);
    }

    #[test]
    fn prefixed_keys_and_operators_without_blanks_parse() {
        let selector = LabelSelector::parse("app.kubernetes.io/name=web,!example.com/skip,x==y,z!=w").unwrap();
        assert_eq!(selector.to_string(), "app.kubernetes.io/name=web,!example.com/skip,x==y,z!=w");
        assert_eq!(selector.requirements()[0].operator(), Operator::Equals);
        assert_eq!(selector.requirements()[1].operator(), Operator::DoesNotExist);
        assert_eq!(selector.requirements()[2].operator(), Operator::DoubleEquals);
    }

    #[test]
    fn syntax_errors_between_requirements_are_reported_as_upstream() {
        assert_eq!(error("x=a y=b"), "found 'y', expected: ',' or 'end of string'");
        assert!(error("x=a||y=b").starts_with(r#"unable to parse requirement: values[0][x]: Invalid value: "a||y""#));
        assert_eq!(error("!x=a"), "found '=', expected: ',' or 'end of string'");
        assert_eq!(error("x=a,"), "found '', expected: identifier after ','");
        assert_eq!(error("x,=a"), "found '=', expected: identifier after ','");
        assert_eq!(error("=a"), "found '=', expected: !, identifier, or 'end of string'");
        assert_eq!(error("x==a==b"), "found '==', expected: ',' or 'end of string'");
    }

    #[test]
    fn syntax_errors_inside_a_requirement_are_reported_as_upstream() {
        assert_eq!(error("x y"), "unable to parse requirement: found 'y', expected: in, notin, =, ==, !=, gt, lt");
        assert_eq!(error("x!"), "unable to parse requirement: found '!', expected: in, notin, =, ==, !=, gt, lt");
        assert_eq!(error("x in a"), "unable to parse requirement: found 'a' expected: '('");
        assert_eq!(error("x in"), "unable to parse requirement: found '' expected: '('");
        assert_eq!(error("x in (="), "unable to parse requirement: found '=', expected: ',', ')' or identifier");
        assert_eq!(error("x in (a b)"), "unable to parse requirement: found 'b', expected: ',' or ')'");
        assert_eq!(error("x in (a"), "unable to parse requirement: found '', expected: ',' or ')'");
        assert_eq!(error("x in (a,="), "unable to parse requirement: found '=', expected: ',', or identifier");
        assert_eq!(error("x=(a)"), "unable to parse requirement: found '(', expected: identifier");
        assert_eq!(error("!"), "unable to parse requirement: found '', expected: identifier");
        assert_eq!(error("!=a"), "found '!=', expected: !, identifier, or 'end of string'");
    }

    #[test]
    fn invalid_keys_are_reported_with_upstream_nil_path() {
        assert_eq!(
            error("-x=a"),
            r#"unable to parse requirement: <nil>: Invalid value: "-x": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"#
        );
        assert!(error(&format!("{}=a", "k".repeat(64))).ends_with("name part must be no more than 63 bytes"));
    }

    #[test]
    fn invalid_values_are_reported_with_their_path() {
        assert_eq!(
            error("x<a"),
            r#"unable to parse requirement: values[0]: Invalid value: "a": for 'Gt', 'Lt' operators, the value must be an integer"#
        );
        assert!(
            error("tier in (a$)")
                .starts_with(r#"unable to parse requirement: values[0][tier]: Invalid value: "a$": a valid label must be an empty string"#)
        );
        assert!(error("x>-1").starts_with(r#"unable to parse requirement: values[0][x]: Invalid value: "-1""#));
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(error("x y,-z"), "unable to parse requirement: found 'y', expected: in, notin, =, ==, !=, gt, lt");
    }
}
