//! Tokens of the Groovy subset a declarative Jenkinsfile uses.
//!
//! The lexer never fails: anything it cannot read becomes a diagnostic and an
//! [`Tok::Other`] token, so the parser can go on and report later errors too.
//! Double-quoted strings are cooked into an [`Interpolation`] here, because
//! `$VAR`, `${VAR}` and `${env.VAR}` are the only expressions Hodei accepts
//! inside them.

use super::model::{Interpolation, Part};
use super::{Diagnostic, Pos};

/// The kind of a string literal, which decides escapes and interpolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Quote {
    /// `'...'`
    Single,
    /// `"..."`
    Double,
    /// `'''...'''`
    TripleSingle,
    /// `"""..."""`
    TripleDouble,
}

impl Quote {
    fn interpolates(self) -> bool {
        matches!(self, Quote::Double | Quote::TripleDouble)
    }

    fn delimiter(self) -> &'static str {
        match self {
            Quote::Single => "'",
            Quote::Double => "\"",
            Quote::TripleSingle => "'''",
            Quote::TripleDouble => "\"\"\"",
        }
    }
}

/// A string literal with its cooked value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StrLit {
    /// The cooked value: escapes resolved, interpolations split out.
    pub value: Interpolation,
    /// Which quotes were used.
    pub quote: Quote,
}

/// A token kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok<'a> {
    /// An identifier or keyword.
    Ident(&'a str),
    /// A string literal.
    Str(StrLit),
    /// A number as written (digits, optionally with a fraction).
    Number(&'a str),
    /// One of `{ } ( ) [ ] , : ; = .`
    Punct(char),
    /// Any other operator or character; only ever part of an error.
    Other(&'a str),
    /// End of input.
    Eof,
}

/// A token with its position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token<'a> {
    pub tok: Tok<'a>,
    pub pos: Pos,
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset after the last character.
    pub end: usize,
    /// Whether a line break separates this token from the previous one.
    pub newline_before: bool,
}

impl Token<'_> {
    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match &self.tok {
            Tok::Ident(name) => format!("`{name}`"),
            Tok::Str(_) => "a string".to_string(),
            Tok::Number(n) => format!("number `{n}`"),
            Tok::Punct(c) => format!("`{c}`"),
            Tok::Other(s) => format!("`{s}`"),
            Tok::Eof => "end of file".to_string(),
        }
    }
}

/// Splits `source` into tokens; the last token is always [`Tok::Eof`].
pub(crate) fn tokenize<'a>(source: &'a str, diagnostics: &mut Vec<Diagnostic>) -> Vec<Token<'a>> {
    let mut lexer = Lexer::new(source, 0, Pos { line: 1, column: 1 });
    let mut tokens = Vec::with_capacity(source.len() / 8);
    let mut newline_before = true;
    // A byte order mark is not part of the text.
    if source.starts_with('\u{feff}') {
        lexer.offset = '\u{feff}'.len_utf8();
    }
    if lexer.rest().starts_with("#!") {
        lexer.skip_line();
    }
    loop {
        newline_before |= lexer.skip_trivia(diagnostics);
        let start = lexer.offset;
        let pos = lexer.pos;
        let tok = match lexer.peek() {
            None => Tok::Eof,
            Some(c) => lexer.token(c, diagnostics),
        };
        let eof = tok == Tok::Eof;
        tokens.push(Token {
            tok,
            pos,
            start,
            end: lexer.offset,
            newline_before,
        });
        newline_before = false;
        if eof {
            return tokens;
        }
    }
}

/// The position in the file of the cooked character `index` of the string
/// literal token that starts at byte `start` (position `pos`).
///
/// Used to report an error found inside a string's value (a label
/// expression) at its real place in the file, escapes included.
pub(crate) fn position_in_literal(source: &str, start: usize, pos: Pos, index: usize) -> Pos {
    let mut lexer = Lexer::new(source, start, pos);
    lexer.record = Some(Vec::new());
    let mut ignored = Vec::new();
    if let Some(quote) = lexer.opening_quote() {
        lexer.string_body(quote, &mut ignored);
    }
    let recorded = lexer.record.unwrap_or_default();
    recorded
        .get(index)
        .copied()
        .or_else(|| recorded.last().copied())
        .unwrap_or(Pos {
            line: pos.line,
            column: pos.column.saturating_add(1),
        })
}

struct Lexer<'a> {
    source: &'a str,
    offset: usize,
    pos: Pos,
    /// When set, the position of every cooked character of a string.
    record: Option<Vec<Pos>>,
}

fn is_ident_start(c: char) -> bool {
    c == '_' || c.is_alphabetic()
}

fn is_ident_char(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

impl<'a> Lexer<'a> {
    fn new(source: &'a str, offset: usize, pos: Pos) -> Self {
        Lexer {
            source,
            offset,
            pos,
            record: None,
        }
    }

    fn peek(&self) -> Option<char> {
        self.source.get(self.offset..)?.chars().next()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.source.get(self.offset..)?.chars().nth(n)
    }

    fn rest(&self) -> &'a str {
        self.source.get(self.offset..).unwrap_or("")
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.offset += c.len_utf8();
        if c == '\n' {
            self.pos.line = self.pos.line.saturating_add(1);
            self.pos.column = 1;
        } else {
            self.pos.column = self.pos.column.saturating_add(1);
        }
        Some(c)
    }

    fn bump_n(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    fn skip_line(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// Skips spaces and comments; returns whether a line break was seen.
    fn skip_trivia(&mut self, diagnostics: &mut Vec<Diagnostic>) -> bool {
        let mut newline = false;
        loop {
            match self.peek() {
                Some('\n') => {
                    newline = true;
                    self.bump();
                }
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                // A backslash before a line break continues the line.
                Some('\\') if matches!(self.peek_at(1), Some('\n')) => {
                    self.bump_n(2);
                }
                Some('/') if self.peek_at(1) == Some('/') => self.skip_line(),
                Some('/') if self.peek_at(1) == Some('*') => {
                    let start = self.pos;
                    self.bump_n(2);
                    loop {
                        if self.rest().starts_with("*/") {
                            self.bump_n(2);
                            break;
                        }
                        match self.bump() {
                            Some('\n') => newline = true,
                            Some(_) => {}
                            None => {
                                diagnostics.push(Diagnostic::error(
                                    start,
                                    "unterminated comment: expected `*/`",
                                ));
                                break;
                            }
                        }
                    }
                }
                _ => return newline,
            }
        }
    }

    fn token(&mut self, c: char, diagnostics: &mut Vec<Diagnostic>) -> Tok<'a> {
        if is_ident_start(c) {
            let start = self.offset;
            while self.peek().is_some_and(is_ident_char) {
                self.bump();
            }
            return Tok::Ident(&self.source[start..self.offset]);
        }
        if c.is_ascii_digit() {
            let start = self.offset;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.bump();
            }
            if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
                self.bump();
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.bump();
                }
            }
            return Tok::Number(&self.source[start..self.offset]);
        }
        if let Some(quote) = self.opening_quote() {
            return Tok::Str(self.string_body(quote, diagnostics));
        }
        match c {
            '=' if matches!(self.peek_at(1), Some('=' | '~')) => {
                let start = self.offset;
                self.bump_n(2);
                if self.peek() == Some('~') {
                    self.bump();
                }
                Tok::Other(&self.source[start..self.offset])
            }
            '{' | '}' | '(' | ')' | '[' | ']' | ',' | ':' | ';' | '=' | '.' => {
                self.bump();
                Tok::Punct(c)
            }
            _ => {
                let start = self.offset;
                self.bump();
                Tok::Other(&self.source[start..self.offset])
            }
        }
    }

    /// Consumes an opening quote, if one is next.
    fn opening_quote(&mut self) -> Option<Quote> {
        let rest = self.rest();
        let quote = if rest.starts_with("'''") {
            Quote::TripleSingle
        } else if rest.starts_with("\"\"\"") {
            Quote::TripleDouble
        } else if rest.starts_with('\'') {
            Quote::Single
        } else if rest.starts_with('"') {
            Quote::Double
        } else {
            return None;
        };
        self.bump_n(quote.delimiter().len());
        Some(quote)
    }

    fn push_char(&mut self, literal: &mut String, c: char, at: Pos) {
        literal.push(c);
        if let Some(record) = &mut self.record {
            record.push(at);
        }
    }

    /// Reads a string after its opening quote, up to and including the closing one.
    fn string_body(&mut self, quote: Quote, diagnostics: &mut Vec<Diagnostic>) -> StrLit {
        let open = Pos {
            line: self.pos.line,
            column: self
                .pos
                .column
                .saturating_sub(quote.delimiter().len() as u32),
        };
        let multiline = matches!(quote, Quote::TripleSingle | Quote::TripleDouble);
        let mut parts = Vec::new();
        let mut literal = String::new();
        let delimiter = quote.delimiter().as_bytes()[0];
        loop {
            // Fast path: a run of ordinary characters (no escape, `$`, quote
            // or line break) is copied at once. Not when recording positions.
            if self.record.is_none() {
                let rest = self.rest();
                let run = rest
                    .bytes()
                    .position(|b| {
                        b == b'\\'
                            || b == b'\n'
                            || b == delimiter
                            || (b == b'$' && quote.interpolates())
                    })
                    .unwrap_or(rest.len());
                if run > 0 {
                    // `run` stops at an ASCII byte or the end: a char boundary.
                    let text = &rest[..run];
                    literal.push_str(text);
                    self.offset += run;
                    let width = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
                    self.pos.column = self.pos.column.saturating_add(width);
                    continue;
                }
            }
            if self.rest().starts_with(quote.delimiter()) {
                // One past the last character is the closing quote.
                let at = self.pos;
                if let Some(record) = &mut self.record {
                    record.push(at);
                }
                self.bump_n(quote.delimiter().len());
                break;
            }
            let at = self.pos;
            let Some(c) = self.peek() else {
                diagnostics.push(Diagnostic::error(
                    open,
                    format!(
                        "unterminated string: expected closing {}",
                        quote.delimiter()
                    ),
                ));
                break;
            };
            if c == '\n' && !multiline {
                diagnostics.push(Diagnostic::error(
                    open,
                    format!(
                        "unterminated string: expected closing {} before the end of the line",
                        quote.delimiter()
                    ),
                ));
                break;
            }
            self.bump();
            match c {
                '\\' => self.escape(&mut literal, at, diagnostics),
                '$' if quote.interpolates() => {
                    if let Some(name) = self.interpolation(at, multiline, diagnostics) {
                        if !literal.is_empty() {
                            parts.push(Part::Literal(std::mem::take(&mut literal)));
                        }
                        parts.push(Part::Var(name));
                    }
                }
                _ => self.push_char(&mut literal, c, at),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        StrLit {
            value: Interpolation::from_parts(parts),
            quote,
        }
    }

    fn escape(&mut self, literal: &mut String, at: Pos, diagnostics: &mut Vec<Diagnostic>) {
        let Some(c) = self.peek() else {
            return;
        };
        let cooked = match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            'b' => '\u{8}',
            'f' => '\u{c}',
            's' => ' ',
            '\\' | '\'' | '"' | '$' => c,
            '\n' => {
                // Line continuation: the break is not part of the value.
                self.bump();
                return;
            }
            'u' => {
                self.bump();
                let digits: String = self.rest().chars().take(4).collect();
                let value = (digits.len() == 4 && digits.chars().all(|d| d.is_ascii_hexdigit()))
                    .then(|| u32::from_str_radix(&digits, 16).ok())
                    .flatten()
                    .and_then(char::from_u32);
                match value {
                    Some(ch) => {
                        self.bump_n(4);
                        self.push_char(literal, ch, at);
                    }
                    None => diagnostics.push(Diagnostic::error(
                        at,
                        "invalid unicode escape: expected `\\u` and four hex digits",
                    )),
                }
                return;
            }
            other => {
                diagnostics.push(Diagnostic::error(
                    at,
                    format!(
                        "invalid escape `\\{other}` in string: expected one of \\n \\t \\r \\b \\f \\s \\\\ \\' \\\" \\$ \\uXXXX"
                    ),
                ));
                self.bump();
                return;
            }
        };
        self.bump();
        self.push_char(literal, cooked, at);
    }

    /// Reads what follows a `$` in an interpolating string; returns the
    /// variable name, or `None` after reporting an error.
    fn interpolation(
        &mut self,
        at: Pos,
        multiline: bool,
        diagnostics: &mut Vec<Diagnostic>,
    ) -> Option<String> {
        match self.peek() {
            Some('{') => {
                self.bump();
                let start = self.offset;
                let mut depth = 1usize;
                let mut in_quote: Option<char> = None;
                loop {
                    let c = match self.peek() {
                        Some('\n') if !multiline => None,
                        other => other,
                    };
                    let Some(c) = c else {
                        diagnostics.push(Diagnostic::error(
                            at,
                            "unterminated `${` in string: expected `}`",
                        ));
                        return None;
                    };
                    if let Some(q) = in_quote {
                        if c == '\\' {
                            self.bump();
                        } else if c == q {
                            in_quote = None;
                        }
                    } else {
                        match c {
                            '\'' | '"' => in_quote = Some(c),
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    self.bump();
                }
                let inner = self.source[start..self.offset].trim();
                self.bump();
                let name = inner.strip_prefix("env.").unwrap_or(inner);
                if is_identifier(name) {
                    Some(name.to_string())
                } else {
                    diagnostics.push(Diagnostic::error(
                        at,
                        format!(
                            "unsupported expression `${{{inner}}}` in string: only $VAR, ${{VAR}} and ${{env.VAR}} are supported"
                        ),
                    ));
                    None
                }
            }
            Some(c) if is_ident_start(c) => {
                let start = self.offset;
                while self.peek().is_some_and(is_ident_char) {
                    self.bump();
                }
                let mut name = &self.source[start..self.offset];
                if name == "env"
                    && self.peek() == Some('.')
                    && self.peek_at(1).is_some_and(is_ident_start)
                {
                    self.bump();
                    let var_start = self.offset;
                    while self.peek().is_some_and(is_ident_char) {
                        self.bump();
                    }
                    name = &self.source[var_start..self.offset];
                }
                if self.peek() == Some('.') && self.peek_at(1).is_some_and(is_ident_start) {
                    let mut end = self.offset + 1;
                    for c in self.source[end..].chars() {
                        if !is_ident_char(c) {
                            break;
                        }
                        end += c.len_utf8();
                    }
                    let property = &self.source[self.offset + 1..end];
                    diagnostics.push(Diagnostic::error(
                        at,
                        format!(
                            "unsupported property access `${name}.{property}` in string: write `${{{name}}}.{property}` for the variable followed by text"
                        ),
                    ));
                    return None;
                }
                Some(name.to_string())
            }
            _ => {
                diagnostics.push(Diagnostic::error(
                    at,
                    "`$` in a double-quoted string must start $VAR or ${VAR}: write `\\$` for a literal dollar sign",
                ));
                None
            }
        }
    }
}

/// Whether `name` is a variable name: a letter or `_`, then letters, digits or `_` (ASCII).
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> (Vec<Tok<'_>>, Vec<String>) {
        let mut diagnostics = Vec::new();
        let tokens = tokenize(source, &mut diagnostics);
        (
            tokens.into_iter().map(|t| t.tok).collect(),
            diagnostics
                .iter()
                .map(|d| format!("{}:{}: {}", d.line, d.column, d.message))
                .collect(),
        )
    }

    fn lit(parts: Vec<Part>, quote: Quote) -> Tok<'static> {
        Tok::Str(StrLit {
            value: Interpolation::from_parts(parts),
            quote,
        })
    }

    fn text(s: &str) -> Part {
        Part::Literal(s.to_string())
    }

    fn var(s: &str) -> Part {
        Part::Var(s.to_string())
    }

    #[test]
    fn strings() {
        let cases: Vec<(&str, Tok<'static>)> = vec![
            ("'a$b'", lit(vec![text("a$b")], Quote::Single)),
            ("\"a$b\"", lit(vec![text("a"), var("b")], Quote::Double)),
            ("\"${b}c\"", lit(vec![var("b"), text("c")], Quote::Double)),
            ("\"${env.HOME}\"", lit(vec![var("HOME")], Quote::Double)),
            (
                "\"$env.HOME/x\"",
                lit(vec![var("HOME"), text("/x")], Quote::Double),
            ),
            ("\"${ X }\"", lit(vec![var("X")], Quote::Double)),
            ("'it\\'s\\n'", lit(vec![text("it's\n")], Quote::Single)),
            ("\"\\$X \\u00e9\"", lit(vec![text("$X é")], Quote::Double)),
            (
                "'''a\n'b'\n'''",
                lit(vec![text("a\n'b'\n")], Quote::TripleSingle),
            ),
            (
                "\"\"\"x\n$Y\"\"\"",
                lit(vec![text("x\n"), var("Y")], Quote::TripleDouble),
            ),
            ("'a\\\nb'", lit(vec![text("ab")], Quote::Single)),
            ("''", lit(vec![], Quote::Single)),
        ];
        for (source, expected) in cases {
            let (tokens, errors) = kinds(source);
            assert_eq!(errors, Vec::<String>::new(), "{source}");
            assert_eq!(tokens, vec![expected, Tok::Eof], "{source}");
        }
    }

    #[test]
    fn string_errors() {
        let cases: [(&str, &[&str]); 10] = [
            ("'abc", &["1:1: unterminated string: expected closing '"]),
            (
                "x 'abc\n",
                &["1:3: unterminated string: expected closing ' before the end of the line"],
            ),
            (
                "'''abc",
                &["1:1: unterminated string: expected closing '''"],
            ),
            (
                "\"${a + b}\"",
                &[
                    "1:2: unsupported expression `${a + b}` in string: only $VAR, ${VAR} and ${env.VAR} are supported",
                ],
            ),
            (
                "\"${x\"\n",
                &[
                    "1:2: unterminated `${` in string: expected `}`",
                    "1:1: unterminated string: expected closing \" before the end of the line",
                ],
            ),
            (
                "\"$1\"",
                &[
                    "1:2: `$` in a double-quoted string must start $VAR or ${VAR}: write `\\$` for a literal dollar sign",
                ],
            ),
            (
                "\"$F.txt\"",
                &[
                    "1:2: unsupported property access `$F.txt` in string: write `${F}.txt` for the variable followed by text",
                ],
            ),
            (
                "'\\q'",
                &[
                    "1:2: invalid escape `\\q` in string: expected one of \\n \\t \\r \\b \\f \\s \\\\ \\' \\\" \\$ \\uXXXX",
                ],
            ),
            (
                "'\\u12'",
                &["1:2: invalid unicode escape: expected `\\u` and four hex digits"],
            ),
            ("/* x", &["1:1: unterminated comment: expected `*/`"]),
        ];
        for (source, expected) in cases {
            let (_, errors) = kinds(source);
            assert_eq!(errors, expected, "{source}");
        }
    }

    #[test]
    fn tokens_and_positions() {
        let mut diagnostics = Vec::new();
        let tokens = tokenize(
            "#!groovy\nsh 'x' // c\n/* a\n b */ é(1.5, ==)",
            &mut diagnostics,
        );
        assert!(diagnostics.is_empty());
        let summary: Vec<(Tok<'_>, u32, u32, bool)> = tokens
            .into_iter()
            .map(|t| (t.tok, t.pos.line, t.pos.column, t.newline_before))
            .collect();
        assert_eq!(
            summary,
            vec![
                (Tok::Ident("sh"), 2, 1, true),
                (lit(vec![text("x")], Quote::Single), 2, 4, false),
                (Tok::Ident("é"), 4, 7, true),
                (Tok::Punct('('), 4, 8, false),
                (Tok::Number("1.5"), 4, 9, false),
                (Tok::Punct(','), 4, 12, false),
                (Tok::Other("=="), 4, 14, false),
                (Tok::Punct(')'), 4, 16, false),
                (Tok::Eof, 4, 17, false),
            ]
        );
    }

    #[test]
    fn positions_inside_literals() {
        let source = "x '\\tab\\u0041c'";
        // cooked value: "\tabAc"
        let start = 2;
        let pos = Pos { line: 1, column: 3 };
        let at = |i| {
            let p = position_in_literal(source, start, pos, i);
            (p.line, p.column)
        };
        assert_eq!(at(0), (1, 4));
        assert_eq!(at(1), (1, 6));
        assert_eq!(at(3), (1, 8));
        assert_eq!(at(4), (1, 14));
        let multi = "'''\nab\n  c'''";
        assert_eq!(
            position_in_literal(multi, 0, Pos { line: 1, column: 1 }, 6),
            Pos { line: 3, column: 3 }
        );
    }
}
