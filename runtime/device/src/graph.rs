//! Checks on a bundle graph's ONNX protobuf before tract builds a model from it.
//!
//! tract trusts its input: a graph output that no node produces makes it panic, and an
//! `axis` attribute far outside the tensor's rank sends its shape inference into a loop over
//! the whole `usize` range. A bundle graph is what `cavsync-export` writes, so it is held to
//! that: the operators the exporter and `quantize` use, in the default domain, names that
//! resolve, and `axis` attributes among those the exporter writes a graph with (-1 for the
//! last axis, or a small non-negative axis).

use std::collections::HashSet;

use tract_onnx::pb::{GraphProto, ModelProto};

/// The operators `cavsync-export` writes (f32 and f16 graphs, and the int8 ones of `quantize`).
const EXPORTED_OPS: [&str; 16] = [
    "Add",
    "Cast",
    "Concat",
    "Div",
    "DynamicQuantizeLinear",
    "Erf",
    "LayerNormalization",
    "MatMul",
    "MatMulInteger",
    "Mul",
    "QuantizeLinear",
    "ReduceMean",
    "Reshape",
    "Slice",
    "Softmax",
    "Transpose",
];

/// Highest rank of any tensor in an exported graph, bounding non-negative `axis` attributes.
const MAX_RANK: i64 = 8;

/// Why the graph is not one this runtime plans, naming the node or value and what was expected.
pub(crate) fn check(model: &ModelProto) -> Result<(), String> {
    let graph = model
        .graph
        .as_ref()
        .ok_or("the model holds no graph (expected one ONNX graph)")?;
    let mut known: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    for node in &graph.node {
        known.extend(node.output.iter().map(String::as_str));
    }
    for (i, node) in graph.node.iter().enumerate() {
        let at = format!("node {i} (`{}`, {})", node.name, node.op_type);
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(format!(
                "{at}: operator domain `{}`; expected the default ONNX domain",
                node.domain
            ));
        }
        if !EXPORTED_OPS.contains(&node.op_type.as_str()) {
            return Err(format!(
                "{at}: operator `{}` is not one cavsync-export writes (expected one of {})",
                node.op_type,
                EXPORTED_OPS.join(", ")
            ));
        }
        if let Some(input) = node
            .input
            .iter()
            .find(|n| !n.is_empty() && !known.contains(n.as_str()))
        {
            return Err(format!(
                "{at}: input `{input}` is not a graph input, an initializer or a node output"
            ));
        }
        for attr in &node.attribute {
            if attr.name == "axis" && !(-1..MAX_RANK).contains(&attr.i) {
                return Err(format!(
                    "{at}: attribute `axis` is {}; expected an integer from -1 to {}",
                    attr.i,
                    MAX_RANK - 1
                ));
            }
        }
    }
    check_outputs(graph, &known)
}

/// Every graph output must be produced by something in the graph.
fn check_outputs(graph: &GraphProto, known: &HashSet<&str>) -> Result<(), String> {
    match graph
        .output
        .iter()
        .find(|o| !known.contains(o.name.as_str()))
    {
        Some(output) => Err(format!(
            "graph output `{}` is not a graph input, an initializer or a node output",
            output.name
        )),
        None => Ok(()),
    }
}
