//! Hodei's gRPC protocol, generated from `proto/hodei/v1/*.proto`.
//!
//! This crate holds nothing but generated code: the prost messages and the
//! tonic clients and servers of the three services (`JobService` for
//! clients, `WorkerService` for workers, `AdminService` for operators). Only
//! the server and the worker depend on it; they convert to and from domain
//! types at their edge, by hand. The `.proto` files document every message
//! and field.

/// The codec of every generated client and server: prost messages, with
/// smaller starting buffers than tonic's default.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

    /// Bytes each call's encode and decode buffers start with (tonic's
    /// default is 8 KiB). Hodei's messages are mostly small and a server
    /// holds one stream per connected worker, so the buffers start small
    /// and grow for a large message (a log chunk, a pipeline's source).
    pub const BUFFER_BYTES: usize = 1024;
    /// Encoded bytes after which a stream yields to other tasks (tonic's
    /// default).
    const YIELD_THRESHOLD: usize = 32 * 1024;

    /// [`ProstCodec`] with [`BUFFER_BYTES`] buffers.
    #[derive(Debug, Clone)]
    pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallBufferCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for SmallBufferCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD))
        }
    }
}

/// Version 1 of the protocol (`package hodei.v1`).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod v1 {
    tonic::include_proto!("hodei.v1");
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    /// Every service, method, message, field, oneof, enum and enum value of
    /// the protocol carries a comment.
    #[test]
    fn every_declaration_is_documented() {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut compiler = protox::Compiler::new([root]).unwrap();
        compiler.include_source_info(true);
        let files = [
            "hodei/v1/common.proto",
            "hodei/v1/job.proto",
            "hodei/v1/worker.proto",
            "hodei/v1/admin.proto",
        ];
        compiler.open_files(files).unwrap();
        let set = compiler.file_descriptor_set();
        let mut missing = Vec::new();
        for file in set.file.iter().filter(|f| files.contains(&f.name())) {
            let documented: HashSet<Vec<i32>> = file
                .source_code_info
                .iter()
                .flat_map(|info| &info.location)
                .filter(|loc| {
                    loc.leading_comments
                        .as_deref()
                        .is_some_and(|c| !c.trim().is_empty())
                })
                .map(|loc| loc.path.clone())
                .collect();
            let mut need = |path: Vec<i32>, what: String| {
                if !documented.contains(&path) {
                    missing.push(format!("{}: {what}", file.name()));
                }
            };
            fn messages(
                prefix: Vec<i32>,
                list: &[prost_types::DescriptorProto],
                need: &mut dyn FnMut(Vec<i32>, String),
            ) {
                for (i, m) in list.iter().enumerate() {
                    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
                        // Synthesised for `map<K, V>` fields.
                        continue;
                    }
                    let path = [prefix.clone(), vec![i as i32]].concat();
                    need(path.clone(), format!("message {}", m.name()));
                    for (j, f) in m.field.iter().enumerate() {
                        need(
                            [path.clone(), vec![2, j as i32]].concat(),
                            format!("field {}.{}", m.name(), f.name()),
                        );
                    }
                    for (j, o) in m.oneof_decl.iter().enumerate() {
                        need(
                            [path.clone(), vec![8, j as i32]].concat(),
                            format!("oneof {}.{}", m.name(), o.name()),
                        );
                    }
                    messages([path.clone(), vec![3]].concat(), &m.nested_type, need);
                }
            }
            messages(vec![4], &file.message_type, &mut need);
            for (i, e) in file.enum_type.iter().enumerate() {
                need(vec![5, i as i32], format!("enum {}", e.name()));
                for (j, v) in e.value.iter().enumerate() {
                    need(
                        vec![5, i as i32, 2, j as i32],
                        format!("enum value {}", v.name()),
                    );
                }
            }
            for (i, s) in file.service.iter().enumerate() {
                need(vec![6, i as i32], format!("service {}", s.name()));
                for (j, m) in s.method.iter().enumerate() {
                    need(
                        vec![6, i as i32, 2, j as i32],
                        format!("rpc {}.{}", s.name(), m.name()),
                    );
                }
            }
        }
        assert!(missing.is_empty(), "undocumented: {missing:#?}");
    }
}
