//! `/ww/calc/0.1.0`: a line calculator. Every line of input is an arithmetic
//! expression; every line of output is its value, or `error: …`.
//!
//! ```text
//! > 1 + 2 * 3          7
//! > (1 + 2) * 3        9
//! > 2 ^ 10 / 4         256
//! > -7 % 3             -1
//! > 1 / 0              error: division by zero
//! ```
//!
//! This is a plain WASI command written with nothing but `std`: it knows nothing of
//! libp2p or of ww. The node hands it the peer's stream as stdin and stdout.

use std::io::{self, BufRead, Write};

fn main() -> io::Result<()> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    for line in io::stdin().lock().lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match evaluate(&line) {
            Ok(value) => writeln!(out, "{value}")?,
            Err(error) => writeln!(out, "error: {error}")?,
        }
        // One answer per question: flush so an interactive peer sees it at once.
        out.flush()?;
    }
    Ok(())
}

/// Evaluates an expression of numbers, `+ - * / % ^`, unary minus and parentheses.
fn evaluate(text: &str) -> Result<f64, String> {
    let mut parser = Parser { tokens: tokenize(text)?, at: 0 };
    let value = parser.sum()?;
    match parser.tokens.get(parser.at) {
        None => Ok(value),
        Some(token) => Err(format!("unexpected `{token}`")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(f64),
    Op(char),
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Number(n) => write!(f, "{n}"),
            Token::Op(c) => write!(f, "{c}"),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_digit() || c == '.' {
            let mut end = start;
            while let Some(&(i, d)) = chars.peek() {
                if !(d.is_ascii_digit() || d == '.') {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            let number = &text[start..end];
            let value = number.parse().map_err(|_| format!("bad number `{number}`"))?;
            tokens.push(Token::Number(value));
        } else if "+-*/%^()".contains(c) {
            tokens.push(Token::Op(c));
            chars.next();
        } else {
            return Err(format!("unexpected `{c}`"));
        }
    }
    Ok(tokens)
}

/// Recursive descent: sum := product (('+'|'-') product)*, and so on down.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn eat(&mut self, op: char) -> bool {
        if self.tokens.get(self.at) == Some(&Token::Op(op)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut value = self.product()?;
        loop {
            if self.eat('+') {
                value += self.product()?;
            } else if self.eat('-') {
                value -= self.product()?;
            } else {
                return Ok(value);
            }
        }
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut value = self.power()?;
        loop {
            if self.eat('*') {
                value *= self.power()?;
            } else if self.eat('/') {
                let divisor = self.power()?;
                if divisor == 0.0 {
                    return Err("division by zero".into());
                }
                value /= divisor;
            } else if self.eat('%') {
                let divisor = self.power()?;
                if divisor == 0.0 {
                    return Err("division by zero".into());
                }
                value %= divisor;
            } else {
                return Ok(value);
            }
        }
    }

    /// Right-associative: 2 ^ 3 ^ 2 = 2 ^ 9.
    fn power(&mut self) -> Result<f64, String> {
        let base = self.unary()?;
        if self.eat('^') {
            return Ok(base.powf(self.power()?));
        }
        Ok(base)
    }

    fn unary(&mut self) -> Result<f64, String> {
        if self.eat('-') {
            return Ok(-self.unary()?);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<f64, String> {
        match self.tokens.get(self.at).cloned() {
            Some(Token::Number(value)) => {
                self.at += 1;
                Ok(value)
            }
            Some(Token::Op('(')) => {
                self.at += 1;
                let value = self.sum()?;
                if !self.eat(')') {
                    return Err("missing `)`".into());
                }
                Ok(value)
            }
            Some(token) => Err(format!("unexpected `{token}`")),
            None => Err("unexpected end of expression".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::evaluate;

    #[test]
    fn arithmetic() {
        assert_eq!(evaluate("1 + 2 * 3"), Ok(7.0));
        assert_eq!(evaluate("(1 + 2) * 3"), Ok(9.0));
        assert_eq!(evaluate("2 ^ 3 ^ 2"), Ok(512.0));
        assert_eq!(evaluate("-7 % 3"), Ok(-1.0));
        assert_eq!(evaluate("1.5 * -2"), Ok(-3.0));
        assert_eq!(evaluate("1 / 0"), Err("division by zero".into()));
        assert!(evaluate("2 +").is_err());
        assert!(evaluate("2 $ 3").is_err());
        assert!(evaluate("(2").is_err());
    }
}
