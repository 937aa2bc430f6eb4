//! The compiled template (a tree of nodes, one per Django node class) and how each node
//! renders.

use std::rc::Rc;

use chrono::Utc;

use super::context::Context;
use super::expr::FilterExpression;
use super::filters::conditional_escape;
use super::format;
use super::smartif::{self, Cond};
use super::value::{py_eq, Value};
use super::RenderFailure;

pub type NodeList = Vec<Node>;

#[derive(Debug, Clone)]
pub enum Node {
    Text(String),
    Var(FilterExpression),
    If(Vec<(Option<Cond>, NodeList)>),
    For(Box<ForNode>),
    With(Vec<(String, FilterExpression)>, NodeList),
    Autoescape(bool, NodeList),
    Cycle {
        id: usize,
        values: Vec<FilterExpression>,
        as_var: Option<String>,
        silent: bool,
    },
    /// Resets the cycle node with this id.
    ResetCycle(usize),
    CsrfToken,
    Filter(Vec<FilterExpression>, NodeList),
    FirstOf(Vec<FilterExpression>, Option<String>),
    IfChanged {
        id: usize,
        exprs: Vec<FilterExpression>,
        body: NodeList,
        else_body: NodeList,
    },
    Lorem {
        count: FilterExpression,
        method: char,
        common: bool,
    },
    Now(String, Option<String>),
    Regroup {
        target: FilterExpression,
        /// `<as_var>.<attribute>`, resolved with `as_var` bound to each item.
        by: FilterExpression,
        as_var: String,
    },
    Spaceless(NodeList),
    WidthRatio {
        value: FilterExpression,
        max: FilterExpression,
        width: FilterExpression,
        as_var: Option<String>,
    },
    /// `{% block %}` outside inheritance renders its content.
    Block(NodeList),
    PartialDef {
        inline: bool,
        body: Rc<NodeList>,
    },
    Partial(String),
    /// A scoped `{% localize %}`, `{% localtime %}` or `{% timezone %}` block.
    Plain(NodeList),
    /// `{% get_current_timezone as name %}`.
    SetVar(String, Value),
}

#[derive(Debug, Clone)]
pub struct ForNode {
    pub loopvars: Vec<String>,
    pub sequence: FilterExpression,
    pub reversed: bool,
    pub body: NodeList,
    pub empty: NodeList,
}

/// The template's partials (name → body), from every `{% partialdef %}` in it.
pub type Partials = std::collections::HashMap<String, Rc<NodeList>>;

pub fn render_list(
    nodes: &[Node],
    ctx: &mut Context,
    out: &mut String,
    partials: &Partials,
) -> Result<(), RenderFailure> {
    for node in nodes {
        render(node, ctx, out, partials)?;
    }
    Ok(())
}

fn render_to_string(
    nodes: &[Node],
    ctx: &mut Context,
    partials: &Partials,
) -> Result<String, RenderFailure> {
    let mut s = String::new();
    render_list(nodes, ctx, &mut s, partials)?;
    Ok(s)
}

/// Django's `render_value_in_context`: localized, then escaped when autoescaping is on.
pub fn value_text(v: &Value, ctx: &Context) -> String {
    let text = format::localize(v);
    if ctx.autoescape && !v.is_safe() {
        super::text::escape(&text)
    } else {
        text
    }
}

fn render(
    node: &Node,
    ctx: &mut Context,
    out: &mut String,
    partials: &Partials,
) -> Result<(), RenderFailure> {
    match node {
        Node::Text(t) => out.push_str(t),
        Node::Var(e) => {
            let v = e.resolve(ctx, false)?;
            out.push_str(&value_text(&v, ctx));
        }
        Node::If(branches) => {
            for (cond, body) in branches {
                let matched = match cond {
                    None => true,
                    Some(c) => smartif::eval(c, ctx)?.truthy(),
                };
                if matched {
                    return render_list(body, ctx, out, partials);
                }
            }
        }
        Node::For(f) => render_for(f, ctx, out, partials)?,
        Node::With(bindings, body) => {
            let values = bindings
                .iter()
                .map(|(k, e)| Ok((k.clone(), e.resolve(ctx, false)?)))
                .collect::<Result<Vec<_>, RenderFailure>>()?;
            ctx.push();
            for (k, v) in values {
                ctx.set(&k, v);
            }
            let r = render_list(body, ctx, out, partials);
            ctx.pop();
            r?;
        }
        Node::Autoescape(on, body) => {
            let old = ctx.autoescape;
            ctx.autoescape = *on;
            let s = render_to_string(body, ctx, partials);
            ctx.autoescape = old;
            // Django marks the block's output safe.
            out.push_str(&s?);
        }
        Node::Cycle {
            id,
            values,
            as_var,
            silent,
        } => {
            let i = match ctx.render_state(*id) {
                Some(Value::Int(i)) => *i as usize,
                _ => 0,
            };
            ctx.set_render_state(*id, Value::Int(((i + 1) % values.len()) as i64));
            let v = values[i].resolve(ctx, false)?;
            if let Some(name) = as_var {
                ctx.set_upward(name, v.clone());
            }
            if !silent {
                out.push_str(&value_text(&v, ctx));
            }
        }
        Node::ResetCycle(id) => ctx.set_render_state(*id, Value::Int(0)),
        Node::CsrfToken => {
            if let Some(token) = ctx.get("csrf_token").cloned() {
                if token.truthy() && token.to_py_str() != "NOTPROVIDED" {
                    out.push_str(&format!(
                        "<input type=\"hidden\" name=\"csrfmiddlewaretoken\" value=\"{}\">",
                        conditional_escape(&token).to_py_str()
                    ));
                }
            }
        }
        Node::Filter(filters, body) => {
            let text = render_to_string(body, ctx, partials)?;
            let mut v = Value::safe(text);
            // The block's output goes through the filters as a safe string, and the result
            // is written as it is (Django's FilterNode does not escape it again).
            for e in filters {
                ctx.push();
                ctx.set("var", v);
                let r = e.resolve(ctx, false);
                ctx.pop();
                v = r?;
            }
            out.push_str(&v.to_py_str());
        }
        Node::FirstOf(exprs, as_var) => {
            let mut first = String::new();
            for e in exprs {
                let v = e.resolve(ctx, true)?;
                if v.truthy() {
                    first = value_text(&v, ctx);
                    break;
                }
            }
            match as_var {
                Some(name) => ctx.set(name, Value::safe(first)),
                None => out.push_str(&first),
            }
        }
        Node::IfChanged {
            id,
            exprs,
            body,
            else_body,
        } => {
            let compare = if exprs.is_empty() {
                Value::str(render_to_string(body, ctx, partials)?)
            } else {
                Value::list(
                    exprs
                        .iter()
                        .map(|e| e.resolve(ctx, true))
                        .collect::<Result<_, _>>()?,
                )
            };
            let changed = !ctx
                .loop_state(*id)
                .is_some_and(|last| py_eq(last, &compare));
            if changed {
                ctx.set_loop_state(*id, compare.clone());
                if exprs.is_empty() {
                    out.push_str(compare.as_str().unwrap_or_default());
                } else {
                    render_list(body, ctx, out, partials)?;
                }
            } else {
                render_list(else_body, ctx, out, partials)?;
            }
        }
        Node::Lorem {
            count,
            method,
            common,
        } => {
            let n = count
                .resolve(ctx, false)?
                .as_int()
                .or_else(|| count.resolve(ctx, false).ok()?.as_str()?.parse().ok())
                .unwrap_or(1);
            out.push_str(&super::lorem::lorem(n, *method, *common));
        }
        Node::Now(fmt, as_var) => {
            let fmt = format::named_format(fmt).unwrap_or(fmt);
            let text = format::date_format(Utc::now(), fmt);
            match as_var {
                Some(name) => ctx.set(name, Value::str(text)),
                None => out.push_str(&text),
            }
        }
        Node::Regroup { target, by, as_var } => {
            let obj = target.resolve(ctx, true)?;
            let items = match obj {
                Value::None => {
                    ctx.set(as_var, Value::list(Vec::new()));
                    return Ok(());
                }
                other => other.iter_items().ok_or_else(|| {
                    RenderFailure(format!("'{}' object is not iterable", other.type_name()))
                })?,
            };
            let mut groups: Vec<(Value, Vec<Value>)> = Vec::new();
            for item in items {
                ctx.set(as_var, item.clone());
                let key = by.resolve(ctx, true)?;
                match groups.last_mut() {
                    Some((k, members)) if py_eq(k, &key) => members.push(item),
                    _ => groups.push((key, vec![item])),
                }
            }
            let value = Value::list(
                groups
                    .into_iter()
                    .map(|(k, members)| Value::Group(Rc::new((k, Value::list(members)))))
                    .collect(),
            );
            ctx.set(as_var, value);
        }
        Node::Spaceless(body) => {
            let text = render_to_string(body, ctx, partials)?;
            out.push_str(&strip_spaces_between_tags(crate::fields::py_strip(&text)));
        }
        Node::WidthRatio {
            value,
            max,
            width,
            as_var,
        } => {
            let text = widthratio(value, max, width, ctx)?;
            match as_var {
                Some(name) => ctx.set(name, Value::str(text)),
                None => out.push_str(&text),
            }
        }
        Node::Block(body) | Node::Plain(body) => render_list(body, ctx, out, partials)?,
        Node::PartialDef { inline, body, .. } => {
            if *inline {
                render_list(body, ctx, out, partials)?;
            }
        }
        Node::Partial(name) => {
            let Some(body) = partials.get(name) else {
                return Err(RenderFailure(format!(
                    "Partial '{name}' is not defined in the current template."
                )));
            };
            let body = body.clone();
            render_list(&body, ctx, out, partials)?;
        }
        Node::SetVar(name, value) => ctx.set(name, value.clone()),
    }
    Ok(())
}

fn render_for(
    f: &ForNode,
    ctx: &mut Context,
    out: &mut String,
    partials: &Partials,
) -> Result<(), RenderFailure> {
    let seq = f.sequence.resolve(ctx, true)?;
    let mut items = match seq {
        Value::None => Vec::new(),
        other => other.iter_items().ok_or_else(|| {
            RenderFailure(format!("'{}' object is not iterable", other.type_name()))
        })?,
    };
    if items.is_empty() {
        return render_list(&f.empty, ctx, out, partials);
    }
    if f.reversed {
        items.reverse();
    }
    let parentloop = ctx
        .get("forloop")
        .cloned()
        .unwrap_or_else(|| Value::Dict(Rc::new(Vec::new())));
    let len = items.len() as i64;
    ctx.push();
    ctx.push_state();
    let result = (|| {
        for (i, item) in items.into_iter().enumerate() {
            let i = i as i64;
            let forloop = Value::Dict(Rc::new(vec![
                ("parentloop".into(), parentloop.clone()),
                ("length".into(), Value::Int(len)),
                ("counter0".into(), Value::Int(i)),
                ("counter".into(), Value::Int(i + 1)),
                ("revcounter".into(), Value::Int(len - i)),
                ("revcounter0".into(), Value::Int(len - i - 1)),
                ("first".into(), Value::Bool(i == 0)),
                ("last".into(), Value::Bool(i == len - 1)),
            ]));
            ctx.set("forloop", forloop);
            if f.loopvars.len() == 1 {
                ctx.set(&f.loopvars[0], item);
            } else {
                let parts = item.iter_items().ok_or_else(|| {
                    RenderFailure(format!(
                        "cannot unpack non-iterable {} object",
                        item.type_name()
                    ))
                })?;
                if parts.len() != f.loopvars.len() {
                    return Err(RenderFailure(format!(
                        "Need {} values to unpack in for loop; got {}. ",
                        f.loopvars.len(),
                        parts.len()
                    )));
                }
                for (name, v) in f.loopvars.iter().zip(parts) {
                    ctx.set(name, v);
                }
            }
            render_list(&f.body, ctx, out, partials)?;
        }
        Ok(())
    })();
    ctx.pop_state();
    ctx.pop();
    result
}

fn widthratio(
    value: &FilterExpression,
    max: &FilterExpression,
    width: &FilterExpression,
    ctx: &Context,
) -> Result<String, RenderFailure> {
    let v = value.resolve(ctx, false)?;
    let m = max.resolve(ctx, false)?;
    let w = width.resolve(ctx, false)?;
    let to_f = |x: &Value| match x {
        Value::Str(s, _) => crate::fields::py_strip(s).parse::<f64>().ok(),
        other => other.as_number(),
    };
    let Some(max_value) = to_f(&m) else {
        return Ok(String::new());
    };
    let Some(value) = to_f(&v) else {
        return Ok(String::new());
    };
    let width = match &w {
        Value::Int(i) => *i as f64,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Str(s, _) => match crate::fields::py_strip(s).parse::<i64>() {
            Ok(i) => i as f64,
            Err(_) => {
                return Err(RenderFailure(
                    "widthratio final argument must be a number".into(),
                ))
            }
        },
        Value::Float(f) => f.trunc(),
        _ => {
            return Err(RenderFailure(
                "widthratio final argument must be a number".into(),
            ))
        }
    };
    if max_value == 0.0 {
        return Ok("0".into());
    }
    let ratio = value / max_value * width;
    if !ratio.is_finite() {
        return Ok(String::new());
    }
    Ok(format!("{}", py_round(ratio)))
}

/// Python's `round()` to an integer (half to even).
fn py_round(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        let t = x.trunc();
        if (t as i64) % 2 == 0 {
            t as i64
        } else {
            r as i64
        }
    } else {
        r as i64
    }
}

/// Django's `strip_spaces_between_tags`.
fn strip_spaces_between_tags(s: &str) -> String {
    static RE: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r">\s+<").expect("regex"));
    RE.replace_all(s, "><").into_owned()
}
