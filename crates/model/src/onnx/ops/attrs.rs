//! Reading a node's attributes by name, with errors that name the node's operator and the
//! attribute, since they reach the publisher verbatim.

use tract_onnx::{
    model::ParsingContext,
    pb::{AttributeProto, NodeProto},
    tract_hir::internal::*,
};

pub struct Attrs<'a> {
    ctx: &'a ParsingContext<'a>,
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(ctx: &'a ParsingContext<'a>, node: &'a NodeProto) -> Self {
        Self { ctx, node }
    }

    fn find(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    pub fn has(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    pub fn ints(&self, name: &str) -> TractResult<Vec<i64>> {
        Ok(self.find(name).map(|a| a.ints.clone()).unwrap_or_default())
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        self.find(name).map_or(default, |a| a.i)
    }

    pub fn string(&self, name: &str, default: &str) -> TractResult<String> {
        match self.find(name) {
            None => Ok(default.to_owned()),
            Some(a) => String::from_utf8(a.s.clone())
                .map_err(|_| format_err!("{}: attribute {name} is not UTF-8", self.node.op_type)),
        }
    }

    pub fn strings(&self, name: &str) -> TractResult<Vec<String>> {
        self.find(name)
            .map(|a| {
                a.strings
                    .iter()
                    .map(|s| {
                        String::from_utf8(s.clone())
                            .map_err(|_| format_err!("{}: attribute {name} is not UTF-8", self.node.op_type))
                    })
                    .collect()
            })
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// A list of reals given either as `name` (floats) or as `name_as_tensor` (a float or double
    /// tensor, ai.onnx.ml opset 3), widened to f64.
    pub fn reals(&self, name: &str) -> TractResult<Vec<f64>> {
        if let Some(tensor) = self.find(&format!("{name}_as_tensor")).and_then(|a| a.t.as_ref()) {
            let tensor = self.ctx.load_tensor(tensor)?;
            let tensor = tensor.cast_to::<f64>()?;
            return Ok(super::values::<f64>(&tensor)?.to_vec());
        }
        Ok(self
            .find(name)
            .map(|a| a.floats.iter().map(|f| f64::from(*f)).collect())
            .unwrap_or_default())
    }

    /// An index attribute's values as usize, refusing negative ones.
    pub fn indices(&self, name: &str) -> TractResult<Vec<usize>> {
        self.ints(name)?
            .into_iter()
            .map(|i| {
                usize::try_from(i)
                    .map_err(|_| format_err!("{}: attribute {name} holds the negative index {i}", self.node.op_type))
            })
            .collect()
    }

    pub fn op(&self) -> &str {
        &self.node.op_type
    }
}

/// Fails with `what` unless `ok`.
pub fn expect(ok: bool, what: impl FnOnce() -> String) -> TractResult<()> {
    if ok { Ok(()) } else { bail!("{}", what()) }
}
