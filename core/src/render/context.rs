//! The render context: a stack of scopes (Django's `Context.dicts`, with `True`, `False` and
//! `None` at the bottom), the autoescape switch, and per-node state that lives for one
//! render (Django's `render_context`: cycles, `ifchanged`).

use std::collections::HashMap;

use super::value::Value;

pub struct Context {
    scopes: Vec<Vec<(String, Value)>>,
    pub autoescape: bool,
    /// Per-node render state keyed by the node's id.
    state: Vec<HashMap<usize, Value>>,
}

impl Context {
    pub fn new(root: Vec<(String, Value)>, autoescape: bool) -> Self {
        let builtins = vec![
            ("True".to_owned(), Value::Bool(true)),
            ("False".to_owned(), Value::Bool(false)),
            ("None".to_owned(), Value::None),
        ];
        Context {
            scopes: vec![builtins, root],
            autoescape,
            state: vec![HashMap::new()],
        }
    }

    /// The innermost binding of `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.scopes
            .iter()
            .rev()
            .find_map(|scope| scope.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v))
    }

    pub fn push(&mut self) {
        self.scopes.push(Vec::new());
    }

    pub fn pop(&mut self) {
        self.scopes.pop();
    }

    /// Binds `name` in the innermost scope.
    pub fn set(&mut self, name: &str, value: Value) {
        let scope = self.scopes.last_mut().expect("a scope");
        match scope.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => scope.push((name.to_owned(), value)),
        }
    }

    /// Django's `set_upward`: binds `name` in the innermost scope that has it, else the
    /// innermost scope.
    pub fn set_upward(&mut self, name: &str, value: Value) {
        let depth = self.scopes.len();
        let target = (1..depth)
            .rev()
            .find(|&i| self.scopes[i].iter().any(|(k, _)| k == name))
            .unwrap_or(depth - 1);
        let scope = &mut self.scopes[target];
        match scope.iter_mut().find(|(k, _)| k == name) {
            Some(entry) => entry.1 = value,
            None => scope.push((name.to_owned(), value)),
        }
    }

    /// State of a node for the whole render (`cycle`).
    pub fn render_state(&self, node: usize) -> Option<&Value> {
        self.state[0].get(&node)
    }

    pub fn set_render_state(&mut self, node: usize, value: Value) {
        self.state[0].insert(node, value);
    }

    /// State of a node for the innermost running `for` loop (`ifchanged`, which Django
    /// keeps in the `forloop` dict), or the render's outside any loop.
    pub fn loop_state(&self, node: usize) -> Option<&Value> {
        self.state.last().and_then(|s| s.get(&node))
    }

    pub fn set_loop_state(&mut self, node: usize, value: Value) {
        self.state
            .last_mut()
            .expect("a state scope")
            .insert(node, value);
    }

    /// A fresh loop state (one run of a `for` loop, all its iterations).
    pub fn push_state(&mut self) {
        self.state.push(HashMap::new());
    }

    pub fn pop_state(&mut self) {
        self.state.pop();
    }
}
