//! `ai.onnx.ml:TreeEnsembleRegressor` and `TreeEnsembleClassifier` (opsets 1 and 3): what
//! skl2onnx emits for IsolationForest, random forests and gradient boosting. Semantics follow
//! the operators' specification as ONNX Runtime implements it: every tree walks from its root to
//! a leaf, the leaf's weights add to their targets (classes), trees aggregate (sum, average, min
//! or max), then `base_values` and the post-transform apply; a classifier with two classes
//! follows ONNX Runtime's binary conventions, which the specification leaves open.
//!
//! Nothing in the attributes is trusted: every child index, feature index and leaf entry is
//! checked once when the graph is parsed, and a walk can take no more steps than its tree has
//! nodes, so a forged ensemble is refused instead of looping or reading out of bounds.

use tract_onnx::{
    model::{OnnxOpRegister, ParsingContext},
    pb::NodeProto,
    prelude::*,
    tract_hir::internal::*,
};

use super::{
    Shared,
    attrs::{Attrs, expect},
};

pub fn register(register: &mut OnnxOpRegister) {
    register.insert("TreeEnsembleRegressor", regressor);
    // tract has its own, which refuses what skl2onnx writes for a binary gradient-boosting
    // classifier (two base values); this one follows ONNX Runtime's binary conventions.
    register.insert("TreeEnsembleClassifier", classifier);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Branch {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl Branch {
    fn parse(mode: &str) -> TractResult<Option<Self>> {
        Ok(Some(match mode {
            "BRANCH_LEQ" => Self::Leq,
            "BRANCH_LT" => Self::Lt,
            "BRANCH_GTE" => Self::Gte,
            "BRANCH_GT" => Self::Gt,
            "BRANCH_EQ" => Self::Eq,
            "BRANCH_NEQ" => Self::Neq,
            "LEAF" => return Ok(None),
            other => bail!(
                "TreeEnsembleRegressor: node mode {other:?} is not one of BRANCH_LEQ, BRANCH_LT, BRANCH_GTE, BRANCH_GT, BRANCH_EQ, BRANCH_NEQ, LEAF"
            ),
        }))
    }

    fn holds(self, x: f64, threshold: f64) -> bool {
        match self {
            Self::Leq => x <= threshold,
            Self::Lt => x < threshold,
            Self::Gte => x >= threshold,
            Self::Gt => x > threshold,
            Self::Eq => x == threshold,
            Self::Neq => x != threshold,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Split {
        feature: usize,
        threshold: f64,
        branch: Branch,
        nan_goes_true: bool,
        /// Indices into the ensemble's node array.
        if_true: usize,
        if_false: usize,
    },
    /// Entries `[start, end)` of the ensemble's leaf weights.
    Leaf { start: usize, end: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PostTransform {
    None,
    Logistic,
    Softmax,
    SoftmaxZero,
}

/// ONNX Runtime's logistic, symmetric around 0 for accuracy in the tails.
fn logistic(x: f64) -> f64 {
    let v = 1.0 / (1.0 + (-x.abs()).exp());
    if x < 0.0 { 1.0 - v } else { v }
}

fn softmax(values: &mut [f64], skip_zeros: bool) {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        if skip_zeros && v.abs() <= 1e-7 {
            *v *= (-max).exp();
        } else {
            *v = (*v - max).exp();
            sum += *v;
        }
    }
    values.iter_mut().for_each(|v| *v /= sum);
}

impl PostTransform {
    fn parse(op: &str, name: &str) -> TractResult<Self> {
        Ok(match name {
            "NONE" => Self::None,
            "LOGISTIC" => Self::Logistic,
            "SOFTMAX" => Self::Softmax,
            "SOFTMAX_ZERO" => Self::SoftmaxZero,
            other => {
                bail!("{op}: post_transform {other:?} is not supported here (NONE, LOGISTIC, SOFTMAX, SOFTMAX_ZERO)")
            }
        })
    }

    fn apply(self, values: &mut [f64]) {
        match self {
            Self::None => {}
            Self::Logistic => values.iter_mut().for_each(|v| *v = logistic(*v)),
            Self::Softmax => softmax(values, false),
            Self::SoftmaxZero => softmax(values, true),
        }
    }
}

/// A parsed, checked ensemble.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeEnsemble {
    nodes: Vec<Node>,
    /// Root node of each tree, and its node count (the bound on a walk's steps).
    roots: Vec<(usize, usize)>,
    /// `(target, weight)` of each leaf entry.
    weights: Vec<(usize, f64)>,
    n_targets: usize,
    base: Vec<f64>,
    aggregate: Aggregate,
    post: PostTransform,
    /// One more than the largest feature index a split reads.
    width: usize,
}

fn regressor(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let ensemble = TreeEnsemble::parse(&Attrs::new(ctx, node), None)?;
    Ok((expand(Shared::new(ensemble)), vec![]))
}

fn classifier(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attrs = Attrs::new(ctx, node);
    let labels = if attrs.has("classlabels_strings") {
        Labels::Strings(attrs.strings("classlabels_strings")?)
    } else {
        Labels::Ints(attrs.ints("classlabels_int64s")?)
    };
    let classes = labels.len();
    expect(classes > 0, || {
        "TreeEnsembleClassifier: no class labels (classlabels_int64s or classlabels_strings)".into()
    })?;
    let ensemble = TreeEnsemble::parse(&attrs, Some(classes))?;
    let used: std::collections::BTreeSet<usize> = ensemble.weights.iter().map(|(c, _)| *c).collect();
    let classifier = Classifier {
        binary_case: classes == 2 && used.len() == 1,
        all_positive: ensemble.weights.iter().all(|(_, w)| *w >= 0.0),
        ensemble,
        labels,
    };
    Ok((expand(Shared::new(classifier)), vec![]))
}

impl TreeEnsemble {
    /// `outputs` is the number of targets (a regressor's `n_targets`) or classes.
    fn parse(attrs: &Attrs, classifier: Option<usize>) -> TractResult<Self> {
        let leaf = if classifier.is_some() { "class" } else { "target" };
        let attr = |name: &str| format!("{leaf}_{name}");
        let op = attrs.op().to_owned();
        let tree_ids = attrs.indices("nodes_treeids")?;
        let node_ids = attrs.indices("nodes_nodeids")?;
        let features = attrs.indices("nodes_featureids")?;
        let modes = attrs.strings("nodes_modes")?;
        let values = attrs.reals("nodes_values")?;
        let true_ids = attrs.indices("nodes_truenodeids")?;
        let false_ids = attrs.indices("nodes_falsenodeids")?;
        let mut nan_true = attrs.ints("nodes_missing_value_tracks_true")?;
        let n = tree_ids.len();
        expect(n > 0, || format!("{op}: the ensemble has no nodes"))?;
        if nan_true.is_empty() {
            nan_true = vec![0; n];
        }
        for (name, len) in [
            ("nodes_nodeids", node_ids.len()),
            ("nodes_featureids", features.len()),
            ("nodes_modes", modes.len()),
            ("nodes_values", values.len()),
            ("nodes_truenodeids", true_ids.len()),
            ("nodes_falsenodeids", false_ids.len()),
            ("nodes_missing_value_tracks_true", nan_true.len()),
        ] {
            expect(len == n, || {
                format!("{op}: {name} has {len} entries, nodes_treeids {n}")
            })?;
        }
        let leaf_trees = attrs.indices(&attr("treeids"))?;
        let leaf_nodes = attrs.indices(&attr("nodeids"))?;
        let leaf_targets = attrs.indices(&attr("ids"))?;
        let leaf_weights = attrs.reals(&attr("weights"))?;
        let l = leaf_trees.len();
        for (name, len) in [
            (attr("nodeids"), leaf_nodes.len()),
            (attr("ids"), leaf_targets.len()),
            (attr("weights"), leaf_weights.len()),
        ] {
            expect(len == l, || {
                format!("{op}: {name} has {len} entries, {leaf}_treeids {l}")
            })?;
        }
        let n_targets = match classifier {
            Some(classes) => classes,
            None => usize::try_from(attrs.int("n_targets", 1))
                .ok()
                .filter(|t| (1..=1 << 20).contains(t))
                .ok_or_else(|| format_err!("{op}: n_targets must be between 1 and 2^20"))?,
        };
        if let Some(bad) = leaf_targets.iter().find(|t| **t >= n_targets) {
            bail!("{op}: a leaf names output {bad}, but there are {n_targets}");
        }
        let aggregate = match attrs.string("aggregate_function", "SUM")?.as_str() {
            _ if classifier.is_some() => Aggregate::Sum,
            "SUM" => Aggregate::Sum,
            "AVERAGE" => Aggregate::Average,
            "MIN" => Aggregate::Min,
            "MAX" => Aggregate::Max,
            other => bail!("{op}: aggregate_function {other:?} is not SUM, AVERAGE, MIN or MAX"),
        };
        let post = PostTransform::parse(&op, &attrs.string("post_transform", "NONE")?)?;
        let base = attrs.reals("base_values")?;
        // ONNX Runtime reads one base value for a two-class classifier as the first class's.
        let one_for_two = classifier == Some(2) && base.len() == 1;
        expect(base.is_empty() || base.len() == n_targets || one_for_two, || {
            format!("{op}: base_values has {} entries for {n_targets} outputs", base.len())
        })?;

        // Nodes in (tree, node id) order; a node's index in that order is where it lives.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| (tree_ids[i], node_ids[i]));
        let mut index = HashMap::with_capacity(n);
        for (at, &i) in order.iter().enumerate() {
            if index.insert((tree_ids[i], node_ids[i]), at).is_some() {
                bail!("{op}: tree {} declares node {} twice", tree_ids[i], node_ids[i]);
            }
        }
        let mut leaf_entries: Vec<usize> = (0..l).collect();
        leaf_entries.sort_by_key(|&i| (leaf_trees[i], leaf_nodes[i]));
        let mut weights = Vec::with_capacity(l);
        let mut nodes = Vec::with_capacity(n);
        let mut width = 0;
        let mut next_entry = 0;
        for &i in &order {
            let (tree, id) = (tree_ids[i], node_ids[i]);
            let child = |child: usize| {
                index.get(&(tree, child)).copied().ok_or_else(|| {
                    format_err!("{op}: node {id} of tree {tree} points at node {child}, which the tree lacks")
                })
            };
            match Branch::parse(&modes[i])? {
                Some(branch) => {
                    let (if_true, if_false) = (child(true_ids[i])?, child(false_ids[i])?);
                    width = width.max(features[i] + 1);
                    nodes.push(Node::Split {
                        feature: features[i],
                        threshold: values[i],
                        branch,
                        nan_goes_true: nan_true[i] != 0,
                        if_true,
                        if_false,
                    });
                }
                None => {
                    let start = weights.len();
                    while let Some(&e) = leaf_entries.get(next_entry) {
                        match (leaf_trees[e], leaf_nodes[e]).cmp(&(tree, id)) {
                            std::cmp::Ordering::Less => bail!(
                                "{op}: a leaf weight names node {} of tree {}, which is not a leaf",
                                leaf_nodes[e],
                                leaf_trees[e]
                            ),
                            std::cmp::Ordering::Equal => {
                                weights.push((leaf_targets[e], leaf_weights[e]));
                                next_entry += 1;
                            }
                            std::cmp::Ordering::Greater => break,
                        }
                    }
                    nodes.push(Node::Leaf {
                        start,
                        end: weights.len(),
                    });
                }
            }
        }
        if let Some(&e) = leaf_entries.get(next_entry) {
            bail!(
                "{op}: a leaf weight names node {} of tree {}, which is not a leaf",
                leaf_nodes[e],
                leaf_trees[e]
            );
        }
        // Each tree's root is its node 0 (the specification numbers a tree's nodes from 0).
        let mut roots = Vec::new();
        let mut at = 0;
        while at < n {
            let tree = tree_ids[order[at]];
            let end = (at..n).find(|&j| tree_ids[order[j]] != tree).unwrap_or(n);
            let root = index
                .get(&(tree, 0))
                .copied()
                .ok_or_else(|| format_err!("{op}: tree {tree} has no node 0, where a walk starts"))?;
            roots.push((root, end - at));
            at = end;
        }
        let ensemble = Self {
            nodes,
            roots,
            weights,
            n_targets,
            base,
            aggregate,
            post,
            width,
        };
        ensemble.check_acyclic(&op)?;
        Ok(ensemble)
    }

    /// A tree whose walk could revisit a node is refused here, not discovered by a request.
    fn check_acyclic(&self, op: &str) -> TractResult<()> {
        let mut depth_seen = vec![false; self.nodes.len()];
        for &(root, size) in &self.roots {
            let mut stack = vec![(root, 0_usize)];
            while let Some((node, steps)) = stack.pop() {
                expect(steps < size && !depth_seen[node], || {
                    format!("{op}: a tree's branches meet or loop back (node {node})")
                })?;
                depth_seen[node] = true;
                if let Node::Split { if_true, if_false, .. } = self.nodes[node] {
                    stack.push((if_true, steps + 1));
                    stack.push((if_false, steps + 1));
                }
            }
        }
        Ok(())
    }

    fn leaf_of<T: Copy + Into<f64>>(&self, root: usize, row: &[T]) -> (usize, usize) {
        let mut node = root;
        // Acyclic (checked at parse), so this ends within the tree's size.
        loop {
            match self.nodes[node] {
                Node::Leaf { start, end } => return (start, end),
                Node::Split {
                    feature,
                    threshold,
                    branch,
                    nan_goes_true,
                    if_true,
                    if_false,
                } => {
                    let x: f64 = row[feature].into();
                    let goes_true = if x.is_nan() {
                        nan_goes_true
                    } else {
                        branch.holds(x, threshold)
                    };
                    node = if goes_true { if_true } else { if_false };
                }
            }
        }
    }

    /// Aggregates the trees' leaves for one row into `acc` (sums, or minimum or maximum), and
    /// marks in `seen` the outputs some leaf contributed to.
    fn aggregate_row<T: Copy + Into<f64>>(&self, row: &[T], acc: &mut [f64], seen: &mut [bool]) {
        acc.iter_mut().for_each(|a| *a = 0.0);
        seen.iter_mut().for_each(|s| *s = false);
        for &(root, _) in &self.roots {
            let (start, end) = self.leaf_of(root, row);
            for &(target, w) in &self.weights[start..end] {
                acc[target] = match (seen[target], self.aggregate) {
                    (false, Aggregate::Min | Aggregate::Max) => w,
                    (_, Aggregate::Sum | Aggregate::Average) => acc[target] + w,
                    (true, Aggregate::Min) => acc[target].min(w),
                    (true, Aggregate::Max) => acc[target].max(w),
                };
                seen[target] = true;
            }
        }
    }

    /// A regressor's answer, `[rows, n_targets]`.
    fn regress<T: Copy + Into<f64>>(&self, input: &[T], rows: usize, cols: usize, out: &mut [f32]) {
        let t = self.n_targets;
        let (mut acc, mut seen) = (vec![0.0; t], vec![false; t]);
        for r in 0..rows {
            self.aggregate_row(&input[r * cols..(r + 1) * cols], &mut acc, &mut seen);
            for (k, a) in acc.iter_mut().enumerate() {
                if self.aggregate == Aggregate::Average {
                    *a /= self.roots.len() as f64;
                }
                *a += self.base.get(k).copied().unwrap_or(0.0);
            }
            // ONNX Runtime applies a regressor's post-transform only when it has several targets.
            if t > 1 {
                self.post.apply(&mut acc);
            }
            for (o, a) in out[r * t..(r + 1) * t].iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Labels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl Labels {
    fn len(&self) -> usize {
        match self {
            Self::Ints(v) => v.len(),
            Self::Strings(v) => v.len(),
        }
    }
}

/// A classifier: the ensemble's class scores, and ONNX Runtime's rules for the label and the
/// scores of two classes.
#[derive(Debug, Clone, PartialEq)]
struct Classifier {
    ensemble: TreeEnsemble,
    labels: Labels,
    /// Two classes whose leaves all vote for the same one.
    binary_case: bool,
    all_positive: bool,
}

impl Classifier {
    /// Scores `rows` into `[rows, classes]` and picks each row's label (an index into `labels`).
    fn classify<T: Copy + Into<f64>>(
        &self,
        input: &[T],
        rows: usize,
        cols: usize,
        scores: &mut [f32],
        labels: &mut [usize],
    ) {
        let e = &self.ensemble;
        let n = e.n_targets;
        let (mut acc, mut seen) = (vec![0.0; n], vec![false; n]);
        for r in 0..rows {
            e.aggregate_row(&input[r * cols..(r + 1) * cols], &mut acc, &mut seen);
            let (label, row) = if n > 2 {
                self.many(&mut acc, &mut seen)
            } else {
                self.two(&acc, &seen)
            };
            labels[r] = label;
            for (o, v) in scores[r * n..(r + 1) * n]
                .iter_mut()
                .zip(row.iter().chain(std::iter::repeat(&0.0)))
            {
                *o = *v as f32;
            }
        }
    }

    fn many(&self, acc: &mut [f64], seen: &mut [bool]) -> (usize, Vec<f64>) {
        for (k, b) in self.ensemble.base.iter().enumerate() {
            acc[k] = if seen[k] { acc[k] + b } else { *b };
            seen[k] = true;
        }
        let mut best: Option<usize> = None;
        for k in 0..acc.len() {
            if seen[k] && best.is_none_or(|b| acc[k] > acc[b]) {
                best = Some(k);
            }
        }
        let mut row = acc.to_vec();
        self.ensemble.post.apply(&mut row);
        (best.unwrap_or(0), row)
    }

    fn two(&self, acc: &[f64], seen: &[bool]) -> (usize, Vec<f64>) {
        let base = &self.ensemble.base;
        let (mut p, has_second) = ([acc[0], acc[1]], seen[1]);
        let mut second_class = -1;
        let mut width = if has_second { 2 } else { 1 };
        match base.len() {
            2 if has_second => {
                p[1] = base[1] + p[0];
                p[0] = -p[1];
            }
            2 => {
                p[1] += base[1];
                p[0] += base[0];
                width = 2;
            }
            1 => p[0] += base[0],
            _ => second_class = 3,
        }
        let positive = if width == 2 && has_second {
            p[1]
        } else if seen[0] {
            p[0]
        } else {
            0.0
        };
        let label = if self.binary_case {
            let (cut, above, below) = if self.all_positive { (0.5, 0, 1) } else { (0.0, 2, 3) };
            if positive > cut {
                second_class = above;
                1
            } else {
                second_class = below;
                0
            }
        } else {
            usize::from(positive > 0.0)
        };
        let post = self.ensemble.post;
        let mut row = p[..width].to_vec();
        if width == 2 {
            post.apply(&mut row);
            return (label, row);
        }
        let s = row[0];
        let logistic_post = post == PostTransform::Logistic;
        let row = match second_class {
            2 | 3 if logistic_post => vec![logistic(-s), logistic(s)],
            2 => vec![-s, s],
            3 => vec![s, -s],
            _ => vec![1.0 - s, s],
        };
        (label, row)
    }
}

/// The regressor's inference-time face: shapes, then itself as the typed op below.
impl Expansion for Shared<TreeEnsemble> {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.0.n_targets.to_dim())?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Shared<TreeEnsemble> {
    fn name(&self) -> StaticName {
        "KappaTreeEnsembleRegressor".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Shared<TreeEnsemble> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let [rows, cols] = *input.shape() else {
            bail!("TreeEnsembleRegressor takes a 2-D input, got shape {:?}", input.shape());
        };
        expect(cols >= self.0.width, || {
            format!(
                "TreeEnsembleRegressor reads feature {} of rows that have {cols}",
                self.0.width - 1
            )
        })?;
        let mut out = vec![0.0_f32; rows * self.0.n_targets];
        // Float rows are read where they are; other types are widened once.
        match input.datum_type() {
            DatumType::F32 => self.0.regress(super::values::<f32>(&input)?, rows, cols, &mut out),
            DatumType::F64 => self.0.regress(super::values::<f64>(&input)?, rows, cols, &mut out),
            _ => self
                .0
                .regress(super::values::<f64>(&*input.cast_to::<f64>()?)?, rows, cols, &mut out),
        }
        Ok(tvec!(
            Tensor::from_shape(&[rows, self.0.n_targets], &out)?.into_tvalue()
        ))
    }
}

impl TypedOp for Shared<TreeEnsemble> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(&[
            inputs[0].shape[0].clone(),
            self.0.n_targets.to_dim()
        ])))
    }

    as_op!();
}

impl Expansion for Shared<Classifier> {
    fn name(&self) -> StaticName {
        "TreeEnsembleClassifier".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        let label_type = match self.0.labels {
            Labels::Ints(_) => DatumType::I64,
            Labels::Strings(_) => DatumType::String,
        };
        s.equals(&outputs[0].datum_type, label_type)?;
        s.equals(&outputs[1].datum_type, DatumType::F32)?;
        s.equals(&inputs[0].rank, 2)?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.0.labels.len().to_dim())?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for Shared<Classifier> {
    fn name(&self) -> StaticName {
        "KappaTreeEnsembleClassifier".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Shared<Classifier> {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let [rows, cols] = *input.shape() else {
            bail!(
                "TreeEnsembleClassifier takes a 2-D input, got shape {:?}",
                input.shape()
            );
        };
        let e = &self.0.ensemble;
        expect(cols >= e.width, || {
            format!(
                "TreeEnsembleClassifier reads feature {} of rows that have {cols}",
                e.width - 1
            )
        })?;
        let mut scores = vec![0.0_f32; rows * e.n_targets];
        let mut picked = vec![0_usize; rows];
        match input.datum_type() {
            DatumType::F32 => self
                .0
                .classify(super::values::<f32>(&input)?, rows, cols, &mut scores, &mut picked),
            DatumType::F64 => self
                .0
                .classify(super::values::<f64>(&input)?, rows, cols, &mut scores, &mut picked),
            _ => {
                let wide = input.cast_to::<f64>()?;
                self.0
                    .classify(super::values::<f64>(&wide)?, rows, cols, &mut scores, &mut picked);
            }
        }
        let labels = match &self.0.labels {
            Labels::Ints(l) => Tensor::from_shape(&[rows], &picked.iter().map(|i| l[*i]).collect::<Vec<_>>())?,
            Labels::Strings(l) => tensor1(&picked.iter().map(|i| l[*i].clone()).collect::<Vec<_>>()),
        };
        let scores = Tensor::from_shape(&[rows, e.n_targets], &scores)?;
        Ok(tvec!(labels.into_tvalue(), scores.into_tvalue()))
    }
}

impl TypedOp for Shared<Classifier> {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n = inputs[0].shape[0].clone();
        let label = match self.0.labels {
            Labels::Ints(_) => i64::fact(std::slice::from_ref(&n)),
            Labels::Strings(_) => String::fact(std::slice::from_ref(&n)),
        };
        Ok(tvec!(label, f32::fact(&[n, self.0.labels.len().to_dim()])))
    }

    as_op!();
}
