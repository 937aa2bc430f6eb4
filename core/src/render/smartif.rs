//! The `{% if %}` expression language (Django's `smartif`): `or`, `and`, `not`, `in`,
//! `not in`, `is`, `is not`, `==`, `!=`, `<`, `<=`, `>`, `>=`, with Django's binding powers.
//! An operator whose operands fail to evaluate or compare is false, as in Django.

use super::context::Context;
use super::expr::FilterExpression;
use super::value::{py_cmp, py_eq, py_in, py_is, Value};
use super::{CompileError, RenderFailure};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Or,
    And,
    Not,
    In,
    NotIn,
    Is,
    IsNot,
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn from_token(t: &str) -> Option<Op> {
        Some(match t {
            "or" => Op::Or,
            "and" => Op::And,
            "not" => Op::Not,
            "in" => Op::In,
            "not in" => Op::NotIn,
            "is" => Op::Is,
            "is not" => Op::IsNot,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "<" => Op::Lt,
            "<=" => Op::Le,
            _ => return None,
        })
    }

    fn binding_power(self) -> u8 {
        match self {
            Op::Or => 6,
            Op::And => 7,
            Op::Not => 8,
            Op::In | Op::NotIn => 9,
            _ => 10,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Op::Or => "or",
            Op::And => "and",
            Op::Not => "not",
            Op::In => "in",
            Op::NotIn => "not in",
            Op::Is => "is",
            Op::IsNot => "is not",
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Cond {
    Literal(FilterExpression),
    Not(Box<Cond>),
    Binary(Op, Box<Cond>, Box<Cond>),
}

enum Tok {
    Op(Op),
    Lit(FilterExpression, String),
    End,
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn next(&mut self) -> Tok {
        if self.pos < self.tokens.len() {
            self.pos += 1;
            std::mem::replace(&mut self.tokens[self.pos - 1], Tok::End)
        } else {
            Tok::End
        }
    }

    fn peek_lbp(&self) -> u8 {
        match self.tokens.get(self.pos) {
            Some(Tok::Op(op)) if *op != Op::Not => op.binding_power(),
            _ => 0,
        }
    }

    fn display_current(&self) -> String {
        match self.tokens.get(self.pos) {
            Some(Tok::Op(op)) => op.text().to_owned(),
            Some(Tok::Lit(_, s)) => s.clone(),
            _ => "end".to_owned(),
        }
    }

    fn expression(&mut self, rbp: u8) -> Result<Cond, CompileError> {
        let mut left = match self.next() {
            Tok::Lit(e, _) => Cond::Literal(e),
            Tok::Op(Op::Not) => Cond::Not(Box::new(self.expression(Op::Not.binding_power())?)),
            Tok::Op(op) => {
                return Err(CompileError(format!(
                    "Not expecting '{}' in this position in if tag.",
                    op.text()
                )))
            }
            Tok::End => {
                return Err(CompileError(
                    "Unexpected end of expression in if tag.".into(),
                ))
            }
        };
        loop {
            // `not` cannot be infix: Django raises when it meets one here.
            if let Some(Tok::Op(Op::Not)) = self.tokens.get(self.pos) {
                if rbp < Op::Not.binding_power() {
                    return Err(CompileError(
                        "Not expecting 'not' as infix operator in if tag.".into(),
                    ));
                }
            }
            if let Some(Tok::Lit(_, s)) = self.tokens.get(self.pos) {
                // A literal's binding power is 0: the loop ends; `parse` reports it.
                let _ = s;
            }
            if rbp >= self.peek_lbp() {
                return Ok(left);
            }
            let Tok::Op(op) = self.next() else {
                unreachable!("peek_lbp > 0 only for operators")
            };
            let right = self.expression(op.binding_power())?;
            left = Cond::Binary(op, Box::new(left), Box::new(right));
        }
    }
}

/// Compiles the words after `if`/`elif`.
pub fn parse(
    bits: &[String],
    compile: impl Fn(&str) -> Result<FilterExpression, CompileError>,
) -> Result<Cond, CompileError> {
    let mut tokens = Vec::with_capacity(bits.len());
    let mut i = 0;
    while i < bits.len() {
        let mut t = bits[i].clone();
        if t == "is" && bits.get(i + 1).is_some_and(|n| n == "not") {
            t = "is not".into();
            i += 1;
        } else if t == "not" && bits.get(i + 1).is_some_and(|n| n == "in") {
            t = "not in".into();
            i += 1;
        }
        tokens.push(match Op::from_token(&t) {
            Some(op) => Tok::Op(op),
            None => Tok::Lit(compile(&t)?, t),
        });
        i += 1;
    }
    let mut p = Parser { tokens, pos: 0 };
    let cond = p.expression(0)?;
    if p.pos < p.tokens.len() {
        return Err(CompileError(format!(
            "Unused '{}' at end of if expression.",
            p.display_current()
        )));
    }
    Ok(cond)
}

/// The condition's value (Python's: `or`/`and` give an operand, not a bool).
pub fn eval(cond: &Cond, ctx: &Context) -> Result<Value, RenderFailure> {
    match cond {
        Cond::Literal(e) => e.resolve(ctx, true),
        Cond::Not(x) => Ok(Value::Bool(!eval_quiet(x, ctx).truthy())),
        Cond::Binary(op, a, b) => Ok(binary(*op, a, b, ctx).unwrap_or(Value::Bool(false))),
    }
}

/// Inside an operator any failure is false.
fn eval_quiet(cond: &Cond, ctx: &Context) -> Value {
    eval(cond, ctx).unwrap_or(Value::Bool(false))
}

fn binary(op: Op, a: &Cond, b: &Cond, ctx: &Context) -> Option<Value> {
    let x = eval(a, ctx).ok()?;
    match op {
        Op::Or => return Some(if x.truthy() { x } else { eval(b, ctx).ok()? }),
        Op::And => return Some(if x.truthy() { eval(b, ctx).ok()? } else { x }),
        _ => {}
    }
    let y = eval(b, ctx).ok()?;
    let ord = || py_cmp(&x, &y);
    Some(Value::Bool(match op {
        Op::In => py_in(&x, &y)?,
        Op::NotIn => !py_in(&x, &y)?,
        Op::Is => py_is(&x, &y),
        Op::IsNot => !py_is(&x, &y),
        Op::Eq => py_eq(&x, &y),
        Op::Ne => !py_eq(&x, &y),
        Op::Gt => ord()?.is_gt(),
        Op::Ge => ord()?.is_ge(),
        Op::Lt => ord()?.is_lt(),
        Op::Le => ord()?.is_le(),
        Op::Or | Op::And | Op::Not => unreachable!("handled above"),
    }))
}
