//! The graph writer's own protobuf messages (`cavsync_formats::pb`) on the wire, read back with
//! tract's generated ONNX schema: every field the writer sets arrives under its official number.

use cavsync_core::model::{Modality, Precision};
use cavsync_formats::checkpoint::Checkpoint;
use cavsync_formats::layout::ModelConfig;
use cavsync_formats::onnx::{F16_SUM_CHUNK, encoder_model, to_bytes};
use cavsync_formats::random::{random_tensors, write_safetensors};
use prost::Message;
use tract_onnx::pb;

/// A small random Sync model (dim 32, one block each) and its checkpoint, read back from safetensors.
fn random_model() -> (ModelConfig, Checkpoint) {
    let config = ModelConfig {
        depth_u: 1,
        ..ModelConfig::sync(32, 1, 2, 64)
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.safetensors");
    write_safetensors(&random_tensors(&config, 7), &path).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    (config, ck)
}

#[test]
fn written_graphs_decode_with_the_official_schema() {
    let (config, ck) = random_model();
    for modality in Modality::ALL {
        for precision in [Precision::F32, Precision::F16] {
            let ours = encoder_model(&ck, &config, modality, precision).unwrap();
            let theirs = pb::ModelProto::decode(to_bytes(&ours).as_slice()).unwrap();
            assert_eq!(theirs.ir_version, ours.ir_version);
            assert_eq!(theirs.producer_name, "cavsync-export");
            assert_eq!(theirs.opset_import.len(), 1);
            assert_eq!(theirs.opset_import[0].version, ours.opset_import[0].version);
            let (g, ours) = (theirs.graph.unwrap(), ours.graph.unwrap());
            assert_eq!(g.name, ours.name);
            assert_eq!(g.node.len(), ours.node.len());
            for (a, b) in g.node.iter().zip(&ours.node) {
                assert_eq!(
                    (&a.op_type, &a.input, &a.output),
                    (&b.op_type, &b.input, &b.output)
                );
                for (x, y) in a.attribute.iter().zip(&b.attribute) {
                    assert_eq!((&x.name, x.r#type, x.i, x.f), (&y.name, y.r#type, y.i, y.f));
                    assert_eq!(x.ints, y.ints);
                }
            }
            assert_eq!(g.initializer.len(), ours.initializer.len());
            for (a, b) in g.initializer.iter().zip(&ours.initializer) {
                assert_eq!(
                    (&a.name, &a.dims, a.data_type),
                    (&b.name, &b.dims, b.data_type)
                );
                assert_eq!(a.raw_data, b.raw_data);
            }
            let shape = |v: &pb::ValueInfoProto| -> Vec<i64> {
                let Some(pb::type_proto::Value::TensorType(t)) =
                    v.r#type.as_ref().unwrap().value.as_ref()
                else {
                    panic!("{}: not a tensor type", v.name)
                };
                t.shape
                    .as_ref()
                    .unwrap()
                    .dim
                    .iter()
                    .map(|d| match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) => n,
                        _ => panic!("{}: symbolic dimension", v.name),
                    })
                    .collect()
            };
            let names: Vec<(&str, Vec<i64>)> = g
                .output
                .iter()
                .map(|v| (v.name.as_str(), shape(v)))
                .collect();
            assert_eq!(
                names,
                [("global", vec![1, 32]), ("tokens", names[1].1.clone())]
            );
            assert_eq!(g.input.len(), 1);
        }
    }
}

/// Inner dimension of every product of an activation with a weight in a graph, in graph order.
fn weight_product_sums(graph: &cavsync_formats::pb::GraphProto) -> Vec<i64> {
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "MatMul")
        .filter_map(|n| graph.initializer.iter().find(|t| t.name == n.input[1]))
        .map(|w| w.dims[0])
        .collect()
}

#[test]
fn f16_graphs_sum_long_products_in_f32_over_short_slices() {
    let (config, ck) = random_model();
    for modality in Modality::ALL {
        let f32_graph = encoder_model(&ck, &config, modality, Precision::F32)
            .unwrap()
            .graph
            .unwrap();
        let f16_graph = encoder_model(&ck, &config, modality, Precision::F16)
            .unwrap()
            .graph
            .unwrap();
        let (whole, sliced) = (
            weight_product_sums(&f32_graph),
            weight_product_sums(&f16_graph),
        );
        // The patch embedding (16 x 16 per channel) is the one product longer than a slice here.
        let patch = if modality == Modality::Visual {
            768
        } else {
            256
        };
        assert_eq!(
            whole[0], patch,
            "{modality}: f32 patch embedding in one product"
        );
        assert!(
            sliced.iter().all(|&k| k <= F16_SUM_CHUNK as i64),
            "{modality}: {sliced:?}"
        );
        assert_eq!(
            sliced.iter().sum::<i64>(),
            whole.iter().sum::<i64>(),
            "{modality}: the slices cover every weight row once"
        );
        // Every slice's product leaves its fp16 kernel for an f32 cast before the sum.
        let producer = |name: &str| f16_graph.node.iter().find(|n| n.output[0] == name);
        let slices = f16_graph
            .node
            .iter()
            .filter(|n| n.op_type == "MatMul")
            .filter(|n| producer(&n.input[0]).is_some_and(|p| p.op_type == "Slice"))
            .inspect(|n| {
                let cast = f16_graph.node.iter().find(|c| c.input[0] == n.output[0]);
                assert!(
                    cast.is_some_and(|c| c.op_type == "Cast" && c.attribute[0].i == 1),
                    "{modality}: {} is not cast to f32",
                    n.name
                );
            })
            .count();
        assert_eq!(slices, patch as usize / F16_SUM_CHUNK, "{modality}");
    }
}
