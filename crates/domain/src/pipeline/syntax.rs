//! The untyped syntax tree of a Jenkinsfile: statements, calls, arguments.
//!
//! Declarative pipelines are Groovy method calls with closures:
//! `name(args) { block }`, `name args` (command syntax, no parentheses),
//! `NAME = value` (in `environment`). This module reads that shape and
//! nothing more; [`validate`](super::validate) gives it meaning. The parser
//! recovers at statement and block boundaries, so one mistake does not hide
//! the next, and it stops descending at [`MAX_NESTING`] levels.

use super::lexer::{StrLit, Tok, Token};
use super::{Diagnostic, MAX_NESTING, Pos};

/// Groovy keywords that start code Hodei does not run.
const GROOVY_KEYWORDS: &[&str] = &[
    "def", "if", "else", "for", "while", "do", "try", "catch", "finally", "switch", "case",
    "return", "import", "class", "new", "throw", "package", "static", "final", "var",
];

/// Blocks whose content is Groovy code, never declarative syntax.
const OPAQUE_BLOCKS: &[&str] = &["script", "expression"];

/// A block `{ ... }` or the whole file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Block<'a> {
    /// Where `{` is (or 1:1 for the file).
    pub pos: Pos,
    pub stmts: Vec<Stmt<'a>>,
}

impl Block<'_> {
    /// Whether the block holds a statement that failed to parse (an error was
    /// reported for it, so "empty" errors would only add noise).
    pub fn had_error(&self) -> bool {
        self.stmts.iter().any(|s| matches!(s.kind, StmtKind::Error))
    }
}

/// A statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stmt<'a> {
    pub pos: Pos,
    pub kind: StmtKind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StmtKind<'a> {
    /// `name ...`
    Call(Call<'a>),
    /// `NAME = value`; `name` is the text before `=`, which may not be an identifier.
    Assign { name: String, value: Expr<'a> },
    /// Something that failed to parse; already reported.
    Error,
}

/// A method call: `name`, `name args`, `name(args)`, each with an optional block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call<'a> {
    pub name: &'a str,
    pub pos: Pos,
    pub args: Vec<Arg<'a>>,
    pub block: Option<Block<'a>>,
}

/// An argument, positional or named (`time: 5`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Arg<'a> {
    pub name: Option<(&'a str, Pos)>,
    pub value: Expr<'a>,
}

/// An expression used as an argument or a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expr<'a> {
    pub pos: Pos,
    /// Byte offset of the first character (used to locate text inside strings).
    pub start: usize,
    pub kind: ExprKind<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExprKind<'a> {
    /// Borrowed from the token list, which outlives the tree.
    Str(&'a StrLit),
    Number(String),
    Bool(bool),
    /// A bare name (`any`, `none`, `MINUTES`).
    Ident(&'a str),
    List(Vec<Expr<'a>>),
    /// A nested call with parentheses (`credentials('id')`, `logRotator(...)`).
    Call(Box<Call<'a>>),
}

/// Parses the tokens of a whole file.
pub(crate) fn parse_tokens<'t>(
    tokens: &'t [Token<'_>],
    diagnostics: &mut Vec<Diagnostic>,
) -> Block<'t> {
    let mut parser = Parser {
        tokens,
        index: 0,
        depth: 0,
        diagnostics,
    };
    let stmts = parser.statements(false);
    Block {
        pos: Pos { line: 1, column: 1 },
        stmts,
    }
}

struct Parser<'t, 'a, 'd> {
    tokens: &'t [Token<'a>],
    index: usize,
    depth: usize,
    diagnostics: &'d mut Vec<Diagnostic>,
}

/// Marks a statement or expression that failed; the error is already reported.
struct Failed;

impl<'t, 'a> Parser<'t, 'a, '_> {
    fn peek(&self) -> &'t Token<'a> {
        // The token list always ends with Eof, and `bump` never passes it.
        &self.tokens[self.index.min(self.tokens.len() - 1)]
    }

    fn peek_at(&self, n: usize) -> &'t Token<'a> {
        &self.tokens[(self.index + n).min(self.tokens.len() - 1)]
    }

    fn bump(&mut self) -> &'t Token<'a> {
        let token = self.peek();
        if token.tok != Tok::Eof {
            self.index += 1;
        }
        token
    }

    fn is_punct(&self, c: char) -> bool {
        self.peek().tok == Tok::Punct(c)
    }

    fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(pos, message));
    }

    /// Statements up to `}` (not consumed) when `in_block`, else up to the end.
    fn statements(&mut self, in_block: bool) -> Vec<Stmt<'t>> {
        let mut stmts = Vec::new();
        loop {
            let token = self.peek();
            match &token.tok {
                Tok::Eof => return stmts,
                Tok::Punct('}') if in_block => return stmts,
                Tok::Punct('}') => {
                    self.error(token.pos, "unexpected `}`: no block is open here");
                    self.bump();
                }
                Tok::Punct(';') => {
                    self.bump();
                }
                _ => {
                    let pos = token.pos;
                    let kind = match self.statement() {
                        Ok(kind) if self.end_of_statement() => kind,
                        Ok(_) => StmtKind::Error,
                        Err(Failed) => {
                            self.skip_statement();
                            StmtKind::Error
                        }
                    };
                    stmts.push(Stmt { pos, kind });
                }
            }
        }
    }

    /// After a statement: a line break, `;`, `}` or the end must follow.
    fn end_of_statement(&mut self) -> bool {
        let token = self.peek();
        match token.tok {
            Tok::Eof | Tok::Punct(';') | Tok::Punct('}') => true,
            _ if token.newline_before => true,
            _ => {
                let message = match &token.tok {
                    Tok::Punct('.') => "unsupported Groovy expression: method calls and property access (`a.b`) need Groovy".to_string(),
                    Tok::Other(op) => format!("unsupported Groovy expression: operator `{op}` needs Groovy"),
                    _ => format!(
                        "expected the end of the statement (a line break or `;`), found {}",
                        token.describe()
                    ),
                };
                self.error(token.pos, message);
                self.skip_statement();
                false
            }
        }
    }

    /// Skips to the end of the current statement: a line break or `;` outside
    /// brackets, or the `}` that closes the enclosing block (not consumed).
    fn skip_statement(&mut self) {
        let mut depth = 0usize;
        let mut first = true;
        loop {
            let token = self.peek();
            match token.tok {
                Tok::Eof => return,
                _ if depth == 0 && !first && token.newline_before => return,
                Tok::Punct(';') if depth == 0 => return,
                Tok::Punct('}') if depth == 0 => return,
                // A stray closer inside the statement: skip it.
                Tok::Punct(')' | ']') if depth == 0 => {}
                Tok::Punct('{' | '(' | '[') => depth += 1,
                Tok::Punct('}' | ')' | ']') => depth -= 1,
                _ => {}
            }
            first = false;
            self.bump();
        }
    }

    /// Skips a bracketed group starting at the current opening token, without recursion.
    fn skip_group(&mut self) {
        let mut depth = 0usize;
        loop {
            match self.bump().tok {
                Tok::Eof => return,
                Tok::Punct('{' | '(' | '[') => depth += 1,
                Tok::Punct('}' | ')' | ']') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Enters one nesting level; on overflow reports and skips the group.
    fn enter(&mut self) -> Result<(), Failed> {
        if self.depth >= MAX_NESTING {
            let pos = self.peek().pos;
            self.error(
                pos,
                format!("nesting too deep: at most {MAX_NESTING} levels of blocks, parentheses and lists"),
            );
            self.skip_group();
            return Err(Failed);
        }
        self.depth += 1;
        Ok(())
    }

    fn statement(&mut self) -> Result<StmtKind<'t>, Failed> {
        let token = self.peek();
        if let Tok::Ident(name) = &token.tok
            && GROOVY_KEYWORDS.contains(name)
        {
            self.error(
                token.pos,
                format!(
                    "unsupported Groovy statement `{name}`: Hodei runs declarative pipelines only"
                ),
            );
            return Err(Failed);
        }
        if matches!(token.tok, Tok::Ident(_) | Tok::Number(_))
            && let Some(eq) = self.assignment_at()
        {
            return self.assignment(eq);
        }
        match &token.tok {
            Tok::Ident(_) => {}
            Tok::Punct('{') => {
                self.error(
                    token.pos,
                    "unexpected block: expected a section, directive or step name before `{`",
                );
                self.skip_group();
                return Err(Failed);
            }
            Tok::Other("@") => {
                self.error(
                    token.pos,
                    "unsupported annotation: shared libraries (`@Library`) need Groovy",
                );
                return Err(Failed);
            }
            _ => {
                self.error(
                    token.pos,
                    format!(
                        "expected a section, directive or step name, found {}",
                        token.describe()
                    ),
                );
                return Err(Failed);
            }
        }
        let call = self.call(true)?;
        Ok(StmtKind::Call(call))
    }

    /// If the statement at the cursor is `NAME = value` (with any tokens on
    /// the same line before `=`), the index of the `=`.
    fn assignment_at(&self) -> Option<usize> {
        let mut i = self.index;
        loop {
            let token = self.tokens.get(i)?;
            if i > self.index && token.newline_before {
                return None;
            }
            match token.tok {
                Tok::Punct('=') => return (i > self.index).then_some(i),
                Tok::Eof | Tok::Str(_) | Tok::Punct('(' | '{' | '}' | '[' | ';' | ',' | ':') => {
                    return None;
                }
                _ => i += 1,
            }
        }
    }

    fn assignment(&mut self, eq: usize) -> Result<StmtKind<'t>, Failed> {
        // The name as written: the tokens before `=`, joined.
        let name = self.tokens[self.index..eq]
            .iter()
            .map(|t| match &t.tok {
                Tok::Ident(s) | Tok::Number(s) | Tok::Other(s) => s.to_string(),
                Tok::Punct(c) => c.to_string(),
                _ => String::new(),
            })
            .collect();
        self.index = eq + 1;
        let value = self.expr()?;
        Ok(StmtKind::Assign { name, value })
    }

    /// A call: the name, then `(args)`, command args, and/or a block.
    /// `statement` is true at statement level, where command syntax is allowed.
    fn call(&mut self, statement: bool) -> Result<Call<'t>, Failed> {
        let name_token = self.bump();
        let Tok::Ident(name) = &name_token.tok else {
            self.error(name_token.pos, "expected a name");
            return Err(Failed);
        };
        let mut call = Call {
            name,
            pos: name_token.pos,
            args: Vec::new(),
            block: None,
        };
        let next = self.peek();
        match &next.tok {
            Tok::Punct('(') if !next.newline_before => {
                self.enter()?;
                self.bump();
                let args = self.arguments(Some(')'));
                self.depth -= 1;
                call.args = args?;
                if self.is_punct('{') && statement {
                    call.block = Some(self.block()?);
                }
            }
            // Groovy code blocks are skipped whole: the caller reports them
            // as unsupported once, rather than every Groovy statement inside.
            Tok::Punct('{') if statement && OPAQUE_BLOCKS.contains(name) => {
                let pos = next.pos;
                self.skip_group();
                call.block = Some(Block {
                    pos,
                    stmts: Vec::new(),
                });
            }
            Tok::Punct('{') if statement => {
                call.block = Some(self.block()?);
            }
            Tok::Punct('.') if !next.newline_before => {
                self.error(
                    next.pos,
                    format!("unsupported Groovy expression: method calls and property access (`{name}.`) need Groovy"),
                );
                return Err(Failed);
            }
            Tok::Str(_) | Tok::Number(_) | Tok::Ident(_) | Tok::Punct('[')
                if statement && !next.newline_before =>
            {
                call.args = self.arguments(None)?;
                if self.is_punct('{') && !self.peek().newline_before {
                    let pos = self.peek().pos;
                    self.error(
                        pos,
                        format!("a block after arguments without parentheses is not valid Groovy: write `{name}(...) {{`"),
                    );
                    self.skip_group();
                    return Err(Failed);
                }
            }
            _ => {}
        }
        Ok(call)
    }

    fn block(&mut self) -> Result<Block<'t>, Failed> {
        self.enter()?;
        let open = self.bump();
        let stmts = self.statements(true);
        self.depth -= 1;
        if self.is_punct('}') {
            self.bump();
        } else {
            self.error(
                open.pos,
                format!(
                    "unclosed block: expected `}}` to close the `{{` at {}",
                    open.pos
                ),
            );
        }
        Ok(Block {
            pos: open.pos,
            stmts,
        })
    }

    /// Comma-separated arguments, up to `close` (consumed) or, in command
    /// syntax (`close` is `None`), up to the end of the statement.
    fn arguments(&mut self, close: Option<char>) -> Result<Vec<Arg<'t>>, Failed> {
        let mut args = Vec::new();
        if let Some(c) = close
            && self.is_punct(c)
        {
            self.bump();
            return Ok(args);
        }
        loop {
            let token = self.peek();
            let name = match (&token.tok, &self.peek_at(1).tok) {
                (Tok::Ident(name), Tok::Punct(':')) => {
                    let name = Some((*name, token.pos));
                    self.bump();
                    self.bump();
                    name
                }
                _ => None,
            };
            let value = self.expr()?;
            args.push(Arg { name, value });
            let token = self.peek();
            match (&token.tok, close) {
                (Tok::Punct(','), _) => {
                    self.bump();
                    if let Some(c) = close
                        && self.is_punct(c)
                    {
                        self.bump();
                        return Ok(args);
                    }
                }
                (Tok::Punct(c), Some(close)) if *c == close => {
                    self.bump();
                    return Ok(args);
                }
                (_, None) => return Ok(args),
                (_, Some(close)) => {
                    let message = match &token.tok {
                        Tok::Other(op) => format!("unsupported Groovy expression: operator `{op}` needs Groovy"),
                        Tok::Punct('.') => "unsupported Groovy expression: method calls and property access (`a.b`) need Groovy".to_string(),
                        Tok::Eof => format!("expected `,` or `{close}`, found end of file"),
                        _ => format!("expected `,` or `{close}` after an argument, found {}", token.describe()),
                    };
                    self.error(token.pos, message);
                    return Err(Failed);
                }
            }
        }
    }

    fn expr(&mut self) -> Result<Expr<'t>, Failed> {
        let token = self.peek();
        let pos = token.pos;
        let start = token.start;
        let kind = match &token.tok {
            Tok::Str(lit) => {
                self.bump();
                ExprKind::Str(lit)
            }
            Tok::Number(n) => {
                self.bump();
                ExprKind::Number(n.to_string())
            }
            Tok::Other("-") if matches!(self.peek_at(1).tok, Tok::Number(_)) => {
                self.bump();
                let Tok::Number(n) = &self.bump().tok else {
                    return Err(Failed);
                };
                ExprKind::Number(format!("-{n}"))
            }
            Tok::Ident("true") => {
                self.bump();
                ExprKind::Bool(true)
            }
            Tok::Ident("false") => {
                self.bump();
                ExprKind::Bool(false)
            }
            Tok::Ident(name) => {
                if self.peek_at(1).tok == Tok::Punct('(') && !self.peek_at(1).newline_before {
                    ExprKind::Call(Box::new(self.call(false)?))
                } else {
                    self.bump();
                    ExprKind::Ident(name)
                }
            }
            Tok::Punct('[') => {
                self.enter()?;
                self.bump();
                let items = self.list_items();
                self.depth -= 1;
                ExprKind::List(items?)
            }
            Tok::Punct('{') => {
                self.error(
                    pos,
                    "unsupported Groovy closure: a block is not a value here",
                );
                self.skip_group();
                return Err(Failed);
            }
            _ => {
                self.error(pos, format!("expected a value, found {}", token.describe()));
                return Err(Failed);
            }
        };
        let next = self.peek();
        match &next.tok {
            Tok::Punct('.') | Tok::Other(_) if !next.newline_before => {
                let message = match (&next.tok, &kind) {
                    (Tok::Other(op), _) => format!("unsupported Groovy expression: operator `{op}` needs Groovy"),
                    (_, ExprKind::Ident(name)) => format!("unsupported Groovy expression: method calls and property access (`{name}.`) need Groovy"),
                    _ => "unsupported Groovy expression: method calls and property access (`a.b`) need Groovy".to_string(),
                };
                self.error(next.pos, message);
                Err(Failed)
            }
            _ => Ok(Expr { pos, start, kind }),
        }
    }

    fn list_items(&mut self) -> Result<Vec<Expr<'t>>, Failed> {
        let mut items = Vec::new();
        if self.is_punct(']') {
            self.bump();
            return Ok(items);
        }
        loop {
            if self.is_punct(':') {
                let pos = self.peek().pos;
                self.error(
                    pos,
                    "unsupported Groovy map literal: expected a list of values",
                );
                return Err(Failed);
            }
            items.push(self.expr()?);
            let token = self.peek();
            match token.tok {
                Tok::Punct(',') => {
                    self.bump();
                    if self.is_punct(']') {
                        self.bump();
                        return Ok(items);
                    }
                }
                Tok::Punct(']') => {
                    self.bump();
                    return Ok(items);
                }
                Tok::Punct(':') => {
                    self.error(
                        token.pos,
                        "unsupported Groovy map literal: expected a list of values",
                    );
                    return Err(Failed);
                }
                _ => {
                    self.error(
                        token.pos,
                        format!("expected `,` or `]` in a list, found {}", token.describe()),
                    );
                    return Err(Failed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::lexer::tokenize;
    use super::*;

    /// A compact rendering of the tree, for table tests.
    fn render_block(block: &Block, out: &mut String) {
        out.push('{');
        for (i, stmt) in block.stmts.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            match &stmt.kind {
                StmtKind::Call(call) => render_call(call, out),
                StmtKind::Assign { name, value } => {
                    out.push_str(name);
                    out.push('=');
                    render_expr(value, out);
                }
                StmtKind::Error => out.push('!'),
            }
        }
        out.push('}');
    }

    fn render_call(call: &Call, out: &mut String) {
        out.push_str(call.name);
        out.push('(');
        for (i, arg) in call.args.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if let Some((name, _)) = &arg.name {
                out.push_str(name);
                out.push(':');
            }
            render_expr(&arg.value, out);
        }
        out.push(')');
        if let Some(block) = &call.block {
            render_block(block, out);
        }
    }

    fn render_expr(expr: &Expr, out: &mut String) {
        match &expr.kind {
            ExprKind::Str(lit) => {
                out.push('"');
                out.push_str(&lit.value.to_string());
                out.push('"');
            }
            ExprKind::Number(n) => out.push_str(n),
            ExprKind::Bool(b) => out.push_str(&b.to_string()),
            ExprKind::Ident(name) => out.push_str(name),
            ExprKind::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render_expr(item, out);
                }
                out.push(']');
            }
            ExprKind::Call(call) => render_call(call, out),
        }
    }

    fn check(source: &str, expected_tree: &str, expected_errors: &[&str]) {
        let mut diagnostics = Vec::new();
        let tokens = tokenize(source, &mut diagnostics);
        let block = parse_tokens(&tokens, &mut diagnostics);
        let mut tree = String::new();
        render_block(&block, &mut tree);
        let errors: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(tree, expected_tree, "tree of {source:?}");
        assert_eq!(errors, expected_errors, "errors of {source:?}");
    }

    #[test]
    fn shapes() {
        check("sh 'a'", "{sh(\"a\")}", &[]);
        check("sh('a')", "{sh(\"a\")}", &[]);
        check("sh(\n  'a',\n)", "{sh(\"a\")}", &[]);
        check("agent any", "{agent(any)}", &[]);
        check("timestamps()", "{timestamps()}", &[]);
        check("skipDefaultCheckout", "{skipDefaultCheckout()}", &[]);
        check(
            "timeout(time: 5, unit: 'MINUTES') { sh 'x' }",
            "{timeout(time:5,unit:\"MINUTES\"){sh(\"x\")}}",
            &[],
        );
        check(
            "sh script: 'x',\n   label: 'y'",
            "{sh(script:\"x\",label:\"y\")}",
            &[],
        );
        check(
            "stage('a') {\n steps { echo \"hi $X\"; echo 'b' }\n}",
            "{stage(\"a\"){steps(){echo(\"hi ${X}\");echo(\"b\")}}}",
            &[],
        );
        check(
            "environment { A = 'x'\n B = credentials('c') }",
            "{environment(){A=\"x\";B=credentials(\"c\")}}",
            &[],
        );
        check("A-B = 'x'", "{A-B=\"x\"}", &[]);
        check(
            "withEnv(['A=1', \"B=2\"]) {}",
            "{withEnv([\"A=1\",\"B=2\"]){}}",
            &[],
        );
        check("retry(-1)", "{retry(-1)}", &[]);
        check("failFast true", "{failFast(true)}", &[]);
        check(
            "options { buildDiscarder(logRotator(numToKeepStr: '5')) }",
            "{options(){buildDiscarder(logRotator(numToKeepStr:\"5\"))}}",
            &[],
        );
        check("stage('x')\n{ }", "{stage(\"x\"){}}", &[]);
    }

    #[test]
    fn errors_recover_at_statement_boundaries() {
        check(
            "steps {\n def x = 1\n sh 'ok'\n}",
            "{steps(){!;sh(\"ok\")}}",
            &["2:2: unsupported Groovy statement `def`: Hodei runs declarative pipelines only"],
        );
        check(
            "sh 'a' + 'b'\necho 'c'",
            "{!;echo(\"c\")}",
            &["1:8: unsupported Groovy expression: operator `+` needs Groovy"],
        );
        check(
            "docker.image('x').inside {\n}\necho 'c'",
            "{!;echo(\"c\")}",
            &[
                "1:7: unsupported Groovy expression: method calls and property access (`docker.`) need Groovy",
            ],
        );
        check(
            "sh 'a' 'b'",
            "{!}",
            &["1:8: expected the end of the statement (a line break or `;`), found a string"],
        );
        check(
            "steps {\n sh 'x'\n",
            "{steps(){sh(\"x\")}}",
            &["1:7: unclosed block: expected `}` to close the `{` at 1:7"],
        );
        check(
            "}\necho 'a'",
            "{echo(\"a\")}",
            &["1:1: unexpected `}`: no block is open here"],
        );
        check(
            "sh('a' 'b')",
            "{!}",
            &["1:8: expected `,` or `)` after an argument, found a string"],
        );
        check(
            "x = [a: 1]",
            "{!}",
            &["1:7: unsupported Groovy map literal: expected a list of values"],
        );
        check(
            "dir 'a' { }",
            "{!}",
            &[
                "1:9: a block after arguments without parentheses is not valid Groovy: write `dir(...) {`",
            ],
        );
        check(
            "'text'",
            "{!}",
            &["1:1: expected a section, directive or step name, found a string"],
        );
        check(
            "@Library('x') _",
            "{!}",
            &["1:1: unsupported annotation: shared libraries (`@Library`) need Groovy"],
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "a {".repeat(100_000), "}".repeat(100_000));
        let mut diagnostics = Vec::new();
        let tokens = tokenize(&deep, &mut diagnostics);
        parse_tokens(&tokens, &mut diagnostics);
        assert_eq!(
            diagnostics.first().map(|d| d.to_string()),
            Some(
                "1:195: nesting too deep: at most 64 levels of blocks, parentheses and lists"
                    .to_string()
            )
        );
        let parens = "x".to_string() + &"(".repeat(50_000) + &"[".repeat(50_000);
        let mut diagnostics = Vec::new();
        let tokens = tokenize(&parens, &mut diagnostics);
        parse_tokens(&tokens, &mut diagnostics);
        assert!(!diagnostics.is_empty());
    }
}
