//! Django's `Parser`: tokens to nodes, with each builtin tag's compile rules and errors.
//! Tags that need what an email service does not have (`include`, `extends`, `url`,
//! `debug`, `querystring`, libraries other than `l10n` and `tz`) are refused here.

use std::collections::HashMap;
use std::rc::Rc;

use super::expr::FilterExpression;
use super::filters;
use super::lexer::{Token, TokenKind};
use super::nodes::{ForNode, Node, NodeList};
use super::smartif;
use super::value::Value;
use super::CompileError;

/// Libraries `{% load %}` accepts: what the original has installed that an email can use.
const LOADABLE: [&str; 2] = ["l10n", "tz"];
/// Libraries the original has installed that we refuse (they need a request, a URL
/// configuration, translations catalogs, static storage or a cache).
const REFUSED_LIBRARIES: [&str; 7] = [
    "admin_list",
    "admin_modify",
    "admin_urls",
    "cache",
    "i18n",
    "log",
    "static",
];

pub struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    next_id: usize,
    named_cycles: HashMap<String, Node>,
    last_cycle: Option<usize>,
    pub loaded: Vec<String>,
    pub partials: HashMap<String, Rc<NodeList>>,
    blocks: Vec<String>,
}

impl Parser {
    pub fn new(tokens: Vec<Token>) -> Self {
        Parser {
            tokens,
            pos: 0,
            next_id: 0,
            named_cycles: HashMap::new(),
            last_cycle: None,
            loaded: Vec::new(),
            partials: HashMap::new(),
            blocks: Vec::new(),
        }
    }

    fn id(&mut self) -> usize {
        self.next_id += 1;
        self.next_id
    }

    fn next_token(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn compile_filter(&self, token: &str) -> Result<FilterExpression, CompileError> {
        filters::LOADED.with(|l| *l.borrow_mut() = self.loaded.clone());
        FilterExpression::parse(token)
    }

    /// Parses until a block tag whose first word is in `until` (left unconsumed).
    pub fn parse(&mut self, until: &[&str]) -> Result<NodeList, CompileError> {
        let mut nodes = Vec::new();
        while self.pos < self.tokens.len() {
            let token = self.tokens[self.pos].clone();
            self.pos += 1;
            match token.kind {
                TokenKind::Text => nodes.push(Node::Text(token.contents)),
                TokenKind::Comment => {}
                TokenKind::Var => {
                    if token.contents.is_empty() {
                        return Err(CompileError(format!(
                            "Empty variable tag on line {}",
                            token.line
                        )));
                    }
                    nodes.push(Node::Var(self.compile_filter(&token.contents)?));
                }
                TokenKind::Block => {
                    let Some(command) = token.contents.split_whitespace().next().map(str::to_owned)
                    else {
                        return Err(CompileError(format!(
                            "Empty block tag on line {}",
                            token.line
                        )));
                    };
                    if until.contains(&command.as_str()) {
                        self.pos -= 1;
                        return Ok(nodes);
                    }
                    if let Some(node) = self.tag(&command, &token)? {
                        nodes.push(node);
                    }
                }
            }
        }
        if let Some(first) = until.first() {
            return Err(CompileError(format!("Unclosed tag, expected '{first}'")));
        }
        Ok(nodes)
    }

    /// The end token after a nested `parse`.
    fn end_token(&mut self) -> Token {
        self.next_token().expect("parse stopped on a token")
    }

    fn skip_past(&mut self, end: &str) -> Result<(), CompileError> {
        while let Some(t) = self.next_token() {
            if t.kind == TokenKind::Block && t.contents == end {
                return Ok(());
            }
        }
        Err(CompileError(format!("Unclosed tag, expected '{end}'")))
    }

    fn tag(&mut self, command: &str, token: &Token) -> Result<Option<Node>, CompileError> {
        let bits = token.split_contents();
        let err = |m: String| Err(CompileError(m));
        Ok(Some(match command {
            "autoescape" => {
                let args: Vec<&str> = token.contents.split_whitespace().collect();
                if args.len() != 2 {
                    return err("'autoescape' tag requires exactly one argument.".into());
                }
                if args[1] != "on" && args[1] != "off" {
                    return err("'autoescape' argument should be 'on' or 'off'".into());
                }
                let body = self.parse(&["endautoescape"])?;
                self.end_token();
                Node::Autoescape(args[1] == "on", body)
            }
            "comment" => {
                self.skip_past("endcomment")?;
                return Ok(None);
            }
            "cycle" => self.cycle(bits)?,
            "resetcycle" => {
                if bits.len() > 2 {
                    return err("'resetcycle' tag accepts at most one argument.".into());
                }
                let id = if bits.len() == 2 {
                    match self.named_cycles.get(&bits[1]) {
                        Some(Node::Cycle { id, .. }) => *id,
                        _ => return err(format!("Named cycle '{}' does not exist.", bits[1])),
                    }
                } else {
                    self.last_cycle
                        .ok_or_else(|| CompileError("No cycles in template.".into()))?
                };
                Node::ResetCycle(id)
            }
            "csrf_token" => Node::CsrfToken,
            "filter" => {
                let rest = token.contents.split_once(char::is_whitespace).map(|(_, r)| r);
                let Some(rest) = rest else {
                    return err("'filter' tag requires an argument".into());
                };
                let expr = self.compile_filter(&format!("var|{rest}"))?;
                if let Some((f, _)) = expr
                    .filters
                    .iter()
                    .find(|(f, _)| f.name == "escape" || f.name == "safe")
                {
                    return err(format!(
                        "\"filter {}\" is not permitted.  Use the \"autoescape\" tag instead.",
                        f.name
                    ));
                }
                let body = self.parse(&["endfilter"])?;
                self.end_token();
                Node::Filter(vec![expr], body)
            }
            "firstof" => {
                let mut args = bits[1..].to_vec();
                if args.is_empty() {
                    return err("'firstof' statement requires at least one argument".into());
                }
                let mut as_var = None;
                if args.len() >= 2 && args[args.len() - 2] == "as" {
                    as_var = args.pop();
                    args.pop();
                }
                let exprs = args
                    .iter()
                    .map(|a| self.compile_filter(a))
                    .collect::<Result<_, _>>()?;
                Node::FirstOf(exprs, as_var)
            }
            "for" => self.for_tag(bits, token)?,
            "if" => self.if_tag(bits)?,
            "ifchanged" => {
                let id = self.id();
                let body = self.parse(&["else", "endifchanged"])?;
                let t = self.end_token();
                let else_body = if t.contents == "else" {
                    let b = self.parse(&["endifchanged"])?;
                    self.end_token();
                    b
                } else {
                    Vec::new()
                };
                let exprs = bits[1..]
                    .iter()
                    .map(|b| self.compile_filter(b))
                    .collect::<Result<_, _>>()?;
                Node::IfChanged {
                    id,
                    exprs,
                    body,
                    else_body,
                }
            }
            "load" => {
                let words: Vec<&str> = token.contents.split_whitespace().collect();
                let names: Vec<&str> = if words.len() >= 4 && words[words.len() - 2] == "from" {
                    vec![words[words.len() - 1]]
                } else {
                    words[1..].to_vec()
                };
                for name in names {
                    if LOADABLE.contains(&name) {
                        self.loaded.push(name.to_owned());
                    } else if REFUSED_LIBRARIES.contains(&name) {
                        return err(format!("the '{name}' tag library is not available for email templates"));
                    } else {
                        return err(format!("'{name}' is not a registered tag library."));
                    }
                }
                return Ok(None);
            }
            "lorem" => {
                let mut args = bits.clone();
                let common = args.last().is_none_or(|l| l != "random");
                if !common {
                    args.pop();
                }
                let method = match args.last().map(String::as_str) {
                    Some(m @ ("w" | "p" | "b")) => {
                        let m = m.chars().next().expect("one char");
                        args.pop();
                        m
                    }
                    _ => 'b',
                };
                let count = if args.len() > 1 {
                    args.pop().expect("count")
                } else {
                    "1".into()
                };
                let count = self.compile_filter(&count)?;
                if args.len() != 1 {
                    return err("Incorrect format for 'lorem' tag".into());
                }
                Node::Lorem {
                    count,
                    method,
                    common,
                }
            }
            "now" => {
                let mut args = bits.clone();
                let mut as_var = None;
                if args.len() == 4 && args[2] == "as" {
                    as_var = args.pop();
                    args.pop();
                }
                if args.len() != 2 {
                    return err("'now' statement takes one argument".into());
                }
                let f: Vec<char> = args[1].chars().collect();
                let fmt: String = if f.len() >= 2 {
                    f[1..f.len() - 1].iter().collect()
                } else {
                    String::new()
                };
                Node::Now(fmt, as_var)
            }
            "regroup" => {
                if bits.len() != 6 {
                    return err("'regroup' tag takes five arguments".into());
                }
                if bits[2] != "by" {
                    return err("second argument to 'regroup' tag must be 'by'".into());
                }
                if bits[4] != "as" {
                    return err("next-to-last argument to 'regroup' tag must be 'as'".into());
                }
                let target = self.compile_filter(&bits[1])?;
                let by = self.compile_filter(&format!("{}.{}", bits[5], bits[3]))?;
                Node::Regroup {
                    target,
                    by,
                    as_var: bits[5].clone(),
                }
            }
            "spaceless" => {
                let body = self.parse(&["endspaceless"])?;
                self.end_token();
                Node::Spaceless(body)
            }
            "templatetag" => {
                let args: Vec<&str> = token.contents.split_whitespace().collect();
                if args.len() != 2 {
                    return err("'templatetag' statement takes one argument".into());
                }
                let text = match args[1] {
                    "openblock" => "{%",
                    "closeblock" => "%}",
                    "openvariable" => "{{",
                    "closevariable" => "}}",
                    "openbrace" => "{",
                    "closebrace" => "}",
                    "opencomment" => "{#",
                    "closecomment" => "#}",
                    other => {
                        return err(format!("Invalid templatetag argument: '{other}'."))
                    }
                };
                Node::Text(text.into())
            }
            "verbatim" => {
                let body = self.parse(&["endverbatim"])?;
                self.end_token();
                let text: String = body
                    .into_iter()
                    .map(|n| match n {
                        Node::Text(t) => t,
                        _ => String::new(),
                    })
                    .collect();
                Node::Text(text)
            }
            "widthratio" => {
                let (value, max, width, as_var) = match bits.len() {
                    4 => (&bits[1], &bits[2], &bits[3], None),
                    6 => {
                        if bits[4] != "as" {
                            return err(
                                "Invalid syntax in widthratio tag. Expecting 'as' keyword".into(),
                            );
                        }
                        (&bits[1], &bits[2], &bits[3], Some(bits[5].clone()))
                    }
                    _ => return err("widthratio takes at least three arguments".into()),
                };
                Node::WidthRatio {
                    value: self.compile_filter(value)?,
                    max: self.compile_filter(max)?,
                    width: self.compile_filter(width)?,
                    as_var,
                }
            }
            "with" => {
                let mut rest = bits[1..].to_vec();
                let kwargs = self.token_kwargs(&mut rest, true)?;
                if kwargs.is_empty() {
                    return err("'with' expected at least one variable assignment".into());
                }
                if !rest.is_empty() {
                    return err(format!("'with' received an invalid token: '{}'", rest[0]));
                }
                let body = self.parse(&["endwith"])?;
                self.end_token();
                Node::With(kwargs, body)
            }
            "block" => {
                let args: Vec<&str> = token.contents.split_whitespace().collect();
                if args.len() != 2 {
                    return err("'block' tag takes only one argument".into());
                }
                let name = args[1].to_owned();
                if self.blocks.contains(&name) {
                    return err(format!("'block' tag with name '{name}' appears more than once"));
                }
                self.blocks.push(name.clone());
                let body = self.parse(&["endblock"])?;
                let end = self.end_token();
                if end.contents != "endblock" && end.contents != format!("endblock {name}") {
                    return err(format!("Invalid block tag: '{}', expected 'endblock'", end.contents));
                }
                Node::Block(body)
            }
            "partialdef" => {
                let (name, inline) = match bits.as_slice() {
                    [_, name, flag] if flag == "inline" => (name.clone(), true),
                    [_, _, _] => return err("The 'inline' argument does not have any parameters; either use 'inline' or remove it completely.".into()),
                    [_, name] => (name.clone(), false),
                    [_] => return err("'partialdef' tag requires a name".into()),
                    _ => return err("'partialdef' tag takes at most 2 arguments".into()),
                };
                let end_named = format!("endpartialdef {name}");
                let body = Rc::new(self.parse(&["endpartialdef"])?);
                let end = self.end_token();
                if end.contents != "endpartialdef" && end.contents != end_named {
                    return err(format!("Invalid block tag: '{}', expected 'endpartialdef'", end.contents));
                }
                if self.partials.contains_key(&name) {
                    return err(format!("Partial '{name}' is already defined"));
                }
                self.partials.insert(name.clone(), body.clone());
                Node::PartialDef { inline, body }
            }
            "partial" => match bits.as_slice() {
                [_, name] => Node::Partial(name.clone()),
                _ => return err("'partial' tag requires a single argument".into()),
            },
            // l10n and tz block tags (after {% load %}): they only scope settings that are
            // already what a JSON context needs.
            "localize" | "localtime" | "timezone" if self.library_for(command) => {
                let end = format!("end{command}");
                let body = self.parse(&[end.as_str()])?;
                self.end_token();
                Node::Plain(body)
            }
            "get_current_timezone" if self.library_for(command) => {
                if bits.len() != 3 || bits[1] != "as" {
                    return err("'get_current_timezone' requires 'as variable' (got ...)".into());
                }
                Node::SetVar(bits[2].clone(), Value::str("UTC"))
            }
            "include" | "extends" | "url" | "debug" | "querystring" => {
                return err(format!("the '{command}' tag is not available for email templates"))
            }
            other => {
                return err(format!(
                    "Invalid block tag on line {}: '{other}'. Did you forget to register or load this tag?",
                    token.line
                ))
            }
        }))
    }

    fn library_for(&self, command: &str) -> bool {
        let lib = if command == "localize" { "l10n" } else { "tz" };
        self.loaded.iter().any(|l| l == lib)
    }

    fn cycle(&mut self, mut args: Vec<String>) -> Result<Node, CompileError> {
        if args.len() < 2 {
            return Err(CompileError(
                "'cycle' tag requires at least two arguments".into(),
            ));
        }
        if args.len() == 2 {
            let name = &args[1];
            if self.named_cycles.is_empty() {
                return Err(CompileError(format!(
                    "No named cycles in template. '{name}' is not defined"
                )));
            }
            return self
                .named_cycles
                .get(name)
                .cloned()
                .ok_or_else(|| CompileError(format!("Named cycle '{name}' does not exist")));
        }
        let mut as_form = false;
        let mut silent = false;
        if args.len() > 4 {
            let n = args.len();
            if args[n - 3] == "as" {
                if args[n - 1] != "silent" {
                    return Err(CompileError(format!(
                        "Only 'silent' flag is allowed after cycle's name, not '{}'.",
                        args[n - 1]
                    )));
                }
                as_form = true;
                silent = true;
                args.pop();
            } else if args[n - 2] == "as" {
                as_form = true;
            }
        }
        let id = self.id();
        let node = if as_form {
            let name = args[args.len() - 1].clone();
            let values = args[1..args.len() - 2]
                .iter()
                .map(|a| self.compile_filter(a))
                .collect::<Result<_, _>>()?;
            let node = Node::Cycle {
                id,
                values,
                as_var: Some(name.clone()),
                silent,
            };
            self.named_cycles.insert(name, node.clone());
            node
        } else {
            let values = args[1..]
                .iter()
                .map(|a| self.compile_filter(a))
                .collect::<Result<_, _>>()?;
            Node::Cycle {
                id,
                values,
                as_var: None,
                silent: false,
            }
        };
        self.last_cycle = Some(id);
        Ok(node)
    }

    fn for_tag(&mut self, bits: Vec<String>, token: &Token) -> Result<Node, CompileError> {
        if bits.len() < 4 {
            return Err(CompileError(format!(
                "'for' statements should have at least four words: {}",
                token.contents
            )));
        }
        let reversed = bits.last().is_some_and(|b| b == "reversed");
        let in_index = bits.len() - if reversed { 3 } else { 2 };
        if bits[in_index] != "in" {
            return Err(CompileError(format!(
                "'for' statements should use the format 'for x in y': {}",
                token.contents
            )));
        }
        let joined = bits[1..in_index].join(" ");
        let loopvars: Vec<String> = regex::Regex::new(r" *, *")
            .expect("regex")
            .split(&joined)
            .map(str::to_owned)
            .collect();
        for var in &loopvars {
            if var.is_empty() || var.contains([' ', '"', '\'', '|']) {
                return Err(CompileError(format!(
                    "'for' tag received an invalid argument: {}",
                    token.contents
                )));
            }
        }
        let sequence = self.compile_filter(&bits[in_index + 1])?;
        let body = self.parse(&["empty", "endfor"])?;
        let t = self.end_token();
        let empty = if t.contents == "empty" {
            let e = self.parse(&["endfor"])?;
            self.end_token();
            e
        } else {
            Vec::new()
        };
        Ok(Node::For(Box::new(ForNode {
            loopvars,
            sequence,
            reversed,
            body,
            empty,
        })))
    }

    fn if_tag(&mut self, bits: Vec<String>) -> Result<Node, CompileError> {
        let mut branches = Vec::new();
        let cond = smartif::parse(&bits[1..], |t| self.compile_filter(t))?;
        let body = self.parse(&["elif", "else", "endif"])?;
        branches.push((Some(cond), body));
        let mut t = self.end_token();
        while t.contents.starts_with("elif") {
            let bits = t.split_contents();
            let cond = smartif::parse(&bits[1..], |t| self.compile_filter(t))?;
            let body = self.parse(&["elif", "else", "endif"])?;
            branches.push((Some(cond), body));
            t = self.end_token();
        }
        if t.contents == "else" {
            let body = self.parse(&["endif"])?;
            branches.push((None, body));
            t = self.end_token();
        }
        if t.contents != "endif" {
            return Err(CompileError(format!(
                "Malformed template tag at line {}: \"{}\"",
                t.line, t.contents
            )));
        }
        Ok(Node::If(branches))
    }

    /// Django's `token_kwargs`: `a=b c=d`, or (legacy) `b as a and d as c`.
    fn token_kwargs(
        &self,
        bits: &mut Vec<String>,
        legacy: bool,
    ) -> Result<Vec<(String, FilterExpression)>, CompileError> {
        let kwarg = |s: &str| -> Option<(String, String)> {
            let (k, v) = s.split_once('=')?;
            (!k.is_empty() && k.chars().all(|c| c.is_alphanumeric() || c == '_') && !v.is_empty())
                .then(|| (k.to_owned(), v.to_owned()))
        };
        let mut out = Vec::new();
        if bits.is_empty() {
            return Ok(out);
        }
        let kwarg_format = kwarg(&bits[0]).is_some();
        if !kwarg_format && (!legacy || bits.len() < 3 || bits[1] != "as") {
            return Ok(out);
        }
        while !bits.is_empty() {
            let (key, value) = if kwarg_format {
                let Some(kv) = kwarg(&bits[0]) else {
                    return Ok(out);
                };
                bits.remove(0);
                kv
            } else {
                if bits.len() < 3 || bits[1] != "as" {
                    return Ok(out);
                }
                let kv = (bits[2].clone(), bits[0].clone());
                bits.drain(..3);
                kv
            };
            let expr = self.compile_filter(&value)?;
            match out
                .iter_mut()
                .find(|(k, _): &&mut (String, FilterExpression)| *k == key)
            {
                Some(entry) => entry.1 = expr,
                None => out.push((key, expr)),
            }
            if !bits.is_empty() && !kwarg_format {
                if bits[0] != "and" {
                    return Ok(out);
                }
                bits.remove(0);
            }
        }
        Ok(out)
    }
}
