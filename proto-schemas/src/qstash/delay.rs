//! QStash's retry delays: `Upstash-Retry-Delay` is an arithmetic expression in
//! milliseconds over `retried` (how many times the message was retried, from
//! 0) with `pow sqrt abs exp floor ceil round min max`; without one the delay
//! is `min(86400, e^(2.5·retried))` seconds. Both are capped at a day.

use std::time::Duration;

/// The longest delay between two attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(86_400);
/// The longest expression taken (it comes in a header).
const MAX_EXPRESSION: usize = 256;

/// A parsed `Upstash-Retry-Delay` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryDelay {
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Number(f64),
    Retried,
    Neg(Box<Expr>),
    Binary(char, Box<Expr>, Box<Expr>),
    Call(String, Vec<Expr>),
}

const FUNCTIONS: [(&str, usize); 9] =
    [("pow", 2), ("sqrt", 1), ("abs", 1), ("exp", 1), ("floor", 1), ("ceil", 1), ("round", 1), ("min", 0), ("max", 0)];

impl RetryDelay {
    /// Parse an expression; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_EXPRESSION {
            return Err(format!("a retry delay expression is at most {MAX_EXPRESSION} characters"));
        }
        let mut parser = Parser { chars: text.chars().filter(|c| !c.is_whitespace()).collect(), at: 0, depth: 0 };
        let expr = parser.sum()?;
        if parser.at != parser.chars.len() {
            return Err(format!("unexpected {:?} in the retry delay expression {text:?}", parser.chars[parser.at]));
        }
        Ok(Self { expr })
    }

    /// The delay after `retried` retries (a negative or invalid result is no delay).
    pub fn delay(&self, retried: u32) -> Duration {
        clamp_ms(eval(&self.expr, f64::from(retried)))
    }
}

/// The delay after `retried` retries: `expression`'s, else QStash's default.
pub fn retry_delay(expression: Option<&RetryDelay>, retried: u32) -> Duration {
    expression.map_or_else(|| default_retry_delay(retried), |e| e.delay(retried))
}

/// QStash's default: `min(86400, e^(2.5·retried))` seconds.
pub fn default_retry_delay(retried: u32) -> Duration {
    clamp_ms((2.5 * f64::from(retried)).exp() * 1000.0)
}

fn clamp_ms(ms: f64) -> Duration {
    if !ms.is_finite() || ms <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_millis(ms.min(MAX_RETRY_DELAY.as_millis() as f64) as u64)
}

fn eval(expr: &Expr, retried: f64) -> f64 {
    match expr {
        Expr::Number(n) => *n,
        Expr::Retried => retried,
        Expr::Neg(e) => -eval(e, retried),
        Expr::Binary(op, a, b) => {
            let (a, b) = (eval(a, retried), eval(b, retried));
            match op {
                '+' => a + b,
                '-' => a - b,
                '*' => a * b,
                '/' => a / b,
                _ => a % b,
            }
        }
        Expr::Call(name, args) => {
            let v: Vec<f64> = args.iter().map(|a| eval(a, retried)).collect();
            match name.as_str() {
                "pow" => v[0].powf(v[1]),
                "sqrt" => v[0].sqrt(),
                "abs" => v[0].abs(),
                "exp" => v[0].exp(),
                "floor" => v[0].floor(),
                "ceil" => v[0].ceil(),
                "round" => v[0].round(),
                "min" => v.into_iter().fold(f64::INFINITY, f64::min),
                _ => v.into_iter().fold(f64::NEG_INFINITY, f64::max),
            }
        }
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn sum(&mut self) -> Result<Expr, String> {
        let mut left = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.at += 1;
            left = Expr::Binary(op, Box::new(left), Box::new(self.product()?));
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Expr, String> {
        let mut left = self.unary()?;
        while let Some(op @ ('*' | '/' | '%')) = self.peek() {
            self.at += 1;
            left = Expr::Binary(op, Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        if self.depth > 32 {
            return Err("the retry delay expression nests too deeply".into());
        }
        let expr = match self.peek() {
            Some('-') => {
                self.at += 1;
                Expr::Neg(Box::new(self.unary()?))
            }
            Some('+') => {
                self.at += 1;
                self.unary()?
            }
            _ => self.atom()?,
        };
        self.depth -= 1;
        Ok(expr)
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.peek() {
            Some('(') => {
                self.at += 1;
                let inner = self.sum()?;
                self.expect(')')?;
                Ok(inner)
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                    self.at += 1;
                }
                let text: String = self.chars[start..self.at].iter().collect();
                text.parse().map(Expr::Number).map_err(|_| format!("{text:?} is not a number"))
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    self.at += 1;
                }
                let name: String = self.chars[start..self.at].iter().collect();
                if name == "retried" {
                    return Ok(Expr::Retried);
                }
                let Some(&(_, arity)) = FUNCTIONS.iter().find(|(f, _)| *f == name) else {
                    return Err(format!(
                        "unknown name {name:?} in the retry delay expression (use retried, pow, sqrt, abs, exp, floor, ceil, round, min, max)"
                    ));
                };
                self.expect('(')?;
                let mut args = vec![self.sum()?];
                while self.peek() == Some(',') {
                    self.at += 1;
                    args.push(self.sum()?);
                }
                self.expect(')')?;
                if arity != 0 && args.len() != arity {
                    return Err(format!("{name} takes {arity} argument(s), not {}", args.len()));
                }
                Ok(Expr::Call(name, args))
            }
            Some(c) => Err(format!("unexpected {c:?} in the retry delay expression")),
            None => Err("the retry delay expression ends too soon".into()),
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected {c:?} in the retry delay expression"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str, retried: u32) -> u128 {
        RetryDelay::parse(text).unwrap().delay(retried).as_millis()
    }

    #[test]
    fn the_documented_expressions_give_the_documented_delays() {
        assert_eq!(ms("1000", 3), 1000);
        assert_eq!(ms("1000 * (1 + retried)", 2), 3000);
        assert_eq!(ms("pow(2, retried) * 1000", 3), 8000);
        assert_eq!(ms("max(1000, pow(2, retried) * 100)", 1), 1000);
        assert_eq!(ms("min(5000, 100 * retried) + sqrt(16) - abs(-4)", 7), 700);
        assert_eq!(ms("round(exp(0)) * floor(2.7) * ceil(0.2)", 0), 2);
        assert_eq!(ms("-5", 0), 0, "a negative delay is no delay");
        assert_eq!(ms("pow(10, 12)", 0), 86_400_000, "capped at a day");
        assert_eq!(default_retry_delay(0).as_millis(), 1000);
        assert_eq!(default_retry_delay(1).as_secs(), 12);
        assert_eq!(default_retry_delay(9).as_secs(), 86_400);
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for bad in ["", "retried +", "foo(1)", "pow(2)", "1000)", "(1", "1 $ 2", &"(".repeat(100)] {
            assert!(RetryDelay::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(RetryDelay::parse(&"1+".repeat(200)).is_err(), "too long");
    }
}
