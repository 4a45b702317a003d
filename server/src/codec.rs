//! The protobuf codec of the `SimpleBank` service (set with `codec_path` in `build.rs`): prost's,
//! except that a request that does not decode is the client's mistake, INVALID_ARGUMENT with a
//! fixed message, not INTERNAL with the decoder's text (tonic's default). Invalid UTF-8 in a
//! string field, a wrong wire type and a message cut short inside its frame all end here.
//!
//! The frame around the message (its size, a body that ends inside it) is checked before, in
//! [`crate::framing`].

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// Encodes like `tonic_prost::ProstCodec`; decodes with [`StrictDecoder`].
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _type: PhantomData }
    }
}

/// Decodes `U`; a malformed message is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The decoder's text (field paths, wire types) is not for the client, nor the log:
        // it is the client's mistake, and the code says what the client needs.
        U::decode(buf).map(Some).map_err(|_| malformed())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

fn malformed() -> Status {
    Status::invalid_argument("the request is not a valid protobuf message of its type")
}
