//! Tokenizer and precedence-climbing parser for the FHIRPath subset.

use serde_json::Value;

use super::{Env, FhirPathError, Func, Name, Node, TypeSpec};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A backtick-delimited identifier: never a keyword.
    Quoted(String),
    Str(String),
    Num(String),
    Env(String),
    Punct(&'static str),
}

struct Lexer<'s> {
    src: &'s str,
    pos: usize,
}

const PUNCT: [&str; 19] = [
    "!=", "!~", "<=", ">=", ".", "(", ")", "[", "]", "{", "}", ",", "|", "=", "~", "<", ">", "+",
    "-",
];

impl Lexer<'_> {
    fn err(&self, message: impl Into<String>) -> FhirPathError {
        FhirPathError {
            message: message.into(),
            position: self.pos,
        }
    }

    fn tokens(mut self) -> Result<Vec<(Tok, usize)>, FhirPathError> {
        let mut out = Vec::new();
        loop {
            let rest = &self.src[self.pos..];
            let trimmed = rest.trim_start();
            self.pos += rest.len() - trimmed.len();
            let start = self.pos;
            let Some(c) = trimmed.chars().next() else {
                return Ok(out);
            };
            let tok = if c.is_ascii_alphabetic() || c == '_' || c == '$' {
                Tok::Ident(self.word(1).to_string())
            } else if c == '%' {
                self.pos += 1;
                match self.src[self.pos..].chars().next() {
                    Some('\'') => Tok::Env(self.string('\'')?),
                    Some('`') => Tok::Env(self.string('`')?),
                    _ => Tok::Env(self.word(0).to_string()),
                }
            } else if c == '\'' {
                Tok::Str(self.string('\'')?)
            } else if c == '`' {
                Tok::Quoted(self.string('`')?)
            } else if c.is_ascii_digit() {
                let len = trimmed
                    .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
                    .unwrap_or(trimmed.len());
                // `1.foo()` is a call on 1, not a decimal.
                let num = trimmed[..len].trim_end_matches('.');
                self.pos += num.len();
                Tok::Num(num.to_string())
            } else if c == '/' && trimmed.starts_with("//") {
                let len = trimmed.find('\n').unwrap_or(trimmed.len());
                self.pos += len;
                continue;
            } else if let Some(p) = PUNCT.iter().find(|p| trimmed.starts_with(**p)) {
                self.pos += p.len();
                Tok::Punct(p)
            } else {
                return Err(self.err(format!("unexpected character '{c}'")));
            };
            out.push((tok, start));
        }
    }

    /// An identifier starting `skip` bytes from here (a leading `$`/`%` sigil is part of it).
    fn word(&mut self, skip: usize) -> &str {
        let rest = &self.src[self.pos..];
        let len = rest
            .char_indices()
            .skip(skip)
            .find(|(_, ch)| !(ch.is_ascii_alphanumeric() || *ch == '_'))
            .map_or(rest.len(), |(i, _)| i);
        self.pos += len;
        &rest[..len]
    }

    fn string(&mut self, quote: char) -> Result<String, FhirPathError> {
        let mut out = String::new();
        let mut chars = self.src[self.pos + 1..].char_indices();
        while let Some((i, ch)) = chars.next() {
            if ch == quote {
                self.pos += 1 + i + 1;
                return Ok(out);
            }
            if ch != '\\' {
                out.push(ch);
                continue;
            }
            match chars.next().map(|(_, e)| e) {
                Some('t') => out.push('\t'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('f') => out.push('\u{c}'),
                Some('u') => {
                    let hex: String = chars.by_ref().take(4).map(|(_, h)| h).collect();
                    let c = u32::from_str_radix(&hex, 16)
                        .ok()
                        .and_then(char::from_u32)
                        .ok_or_else(|| self.err("invalid \\u escape"))?;
                    out.push(c);
                }
                Some(other) => out.push(other),
                None => break,
            }
        }
        Err(self.err("unterminated string"))
    }
}

pub(super) fn parse(src: &str) -> Result<Node, FhirPathError> {
    let tokens = Lexer { src, pos: 0 }.tokens()?;
    let mut p = Parser {
        tokens,
        i: 0,
        end: src.len(),
    };
    let node = p.expr(0)?;
    match p.peek() {
        None => Ok(node),
        Some(t) => Err(p.err(format!("unexpected {t:?}"))),
    }
}

struct Parser {
    tokens: Vec<(Tok, usize)>,
    i: usize,
    end: usize,
}

#[derive(Clone, Copy)]
enum Bin {
    Implies,
    Or,
    Xor,
    And,
    Eq,
    Ne,
    Union,
    Is,
    As,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.i).map(|(t, _)| t)
    }

    fn err(&self, message: impl Into<String>) -> FhirPathError {
        FhirPathError {
            message: message.into(),
            position: self.tokens.get(self.i).map_or(self.end, |(_, p)| *p),
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.i).map(|(t, _)| t.clone());
        self.i += 1;
        t
    }

    fn eat(&mut self, punct: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Punct(p)) if *p == punct) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, punct: &str) -> Result<(), FhirPathError> {
        if self.eat(punct) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{punct}'")))
        }
    }

    /// The binary operator at the cursor with its binding power (higher binds tighter).
    fn binary(&self) -> Result<Option<(Bin, u8)>, FhirPathError> {
        let op = match self.peek() {
            Some(Tok::Ident(w)) => match w.as_str() {
                "implies" => (Bin::Implies, 1),
                "or" => (Bin::Or, 2),
                "xor" => (Bin::Xor, 2),
                "and" => (Bin::And, 3),
                "is" => (Bin::Is, 8),
                "as" => (Bin::As, 8),
                "in" | "contains" | "div" | "mod" => {
                    return Err(self.err(format!("operator '{w}' is not supported")))
                }
                _ => return Ok(None),
            },
            Some(Tok::Punct(p)) => match *p {
                "=" => (Bin::Eq, 5),
                "!=" => (Bin::Ne, 5),
                "|" => (Bin::Union, 7),
                "~" | "!~" | "<" | ">" | "<=" | ">=" | "+" | "-" => {
                    return Err(self.err(format!("operator '{p}' is not supported")))
                }
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        Ok(Some(op))
    }

    fn expr(&mut self, min_bp: u8) -> Result<Node, FhirPathError> {
        let mut lhs = self.postfix()?;
        while let Some((op, bp)) = self.binary()? {
            if bp <= min_bp {
                break;
            }
            self.i += 1;
            let l = Box::new(lhs);
            lhs = match op {
                Bin::Is => Node::Is(l, self.type_spec()?),
                Bin::As => Node::As(l, self.type_spec()?),
                _ => {
                    let r = Box::new(self.expr(bp)?);
                    match op {
                        Bin::Implies => Node::Implies(l, r),
                        Bin::Or => Node::Or(l, r),
                        Bin::Xor => Node::Xor(l, r),
                        Bin::And => Node::And(l, r),
                        Bin::Eq => Node::Eq(l, r, false),
                        Bin::Ne => Node::Eq(l, r, true),
                        _ => Node::Union(l, r),
                    }
                }
            };
        }
        Ok(lhs)
    }

    fn postfix(&mut self) -> Result<Node, FhirPathError> {
        let mut node = self.term()?;
        loop {
            if self.eat(".") {
                let name = self.identifier()?;
                node = if self.eat("(") {
                    Node::Call(Box::new(node), self.function(&name)?)
                } else {
                    Node::Child(Box::new(node), Name::new(name))
                };
            } else if self.eat("[") {
                let index = self.expr(0)?;
                self.expect("]")?;
                node = Node::Index(Box::new(node), Box::new(index));
            } else {
                return Ok(node);
            }
        }
    }

    fn term(&mut self) -> Result<Node, FhirPathError> {
        let Some(tok) = self.next() else {
            return Err(self.err("unexpected end of expression"));
        };
        Ok(match tok {
            Tok::Punct("(") => {
                let inner = self.expr(0)?;
                self.expect(")")?;
                inner
            }
            Tok::Punct("{") => {
                self.expect("}")?;
                Node::Empty
            }
            Tok::Str(s) => Node::Literal(Value::String(s)),
            Tok::Num(n) => Node::Literal(
                serde_json::from_str(&n).map_err(|_| self.err(format!("bad number {n}")))?,
            ),
            Tok::Env(name) => match name.as_str() {
                "resource" | "rootResource" => Node::Env(Env::Resource),
                "context" => Node::Env(Env::Context),
                _ => return Err(self.err(format!("unknown variable %{name}"))),
            },
            Tok::Quoted(name) => Node::Ident(Name::new(name)),
            Tok::Ident(name) => match name.as_str() {
                "true" => Node::Literal(Value::Bool(true)),
                "false" => Node::Literal(Value::Bool(false)),
                "$this" => Node::This,
                _ if name.starts_with('$') => {
                    return Err(self.err(format!("{name} is not supported")))
                }
                _ if self.eat("(") => Node::Call(Box::new(Node::This), self.function(&name)?),
                _ => Node::Ident(Name::new(name)),
            },
            other => return Err(self.err(format!("unexpected {other:?}"))),
        })
    }

    fn identifier(&mut self) -> Result<String, FhirPathError> {
        match self.next() {
            Some(Tok::Ident(name) | Tok::Quoted(name)) if !name.starts_with('$') => Ok(name),
            _ => {
                self.i -= 1;
                Err(self.err("expected an identifier"))
            }
        }
    }

    /// A (possibly qualified) type name: `Quantity`, `FHIR.Quantity`, `System.String`.
    fn type_spec(&mut self) -> Result<TypeSpec, FhirPathError> {
        let first = self.identifier()?;
        if matches!(first.as_str(), "FHIR" | "System") && self.eat(".") {
            return Ok(TypeSpec::new(&self.identifier()?));
        }
        Ok(TypeSpec::new(&first))
    }

    /// The arguments and closing parenthesis of function `name`, whose `(` was consumed.
    fn function(&mut self, name: &str) -> Result<Func, FhirPathError> {
        let func = match name {
            "where" => Func::Where(Box::new(self.expr(0)?)),
            "exists" if self.eat(")") => return Ok(Func::Exists(None)),
            "exists" => Func::Exists(Some(Box::new(self.expr(0)?))),
            "as" => Func::As(self.type_spec()?),
            "is" => Func::Is(self.type_spec()?),
            "ofType" => Func::OfType(self.type_spec()?),
            "extension" => match self.next() {
                Some(Tok::Str(url)) => Func::Extension(url),
                _ => {
                    self.i -= 1;
                    return Err(self.err("extension() takes a string literal"));
                }
            },
            "resolve" => Func::Resolve,
            "first" => Func::First,
            "last" => Func::Last,
            "empty" => Func::Empty,
            "not" => Func::Not,
            "count" => Func::Count,
            "hasValue" => Func::HasValue,
            _ => {
                // Point at the name, not the parenthesis after it.
                self.i = self.i.saturating_sub(2);
                return Err(self.err(format!("function {name}() is not supported")));
            }
        };
        self.expect(")")?;
        Ok(func)
    }
}
