//! Uploads that may alias host memory instead of copying it
//! (`PJRT_HostBufferSemantics_kImmutableZeroCopy`).
//!
//! On the CPU plugin a "device" buffer is host memory, so copying 2.4 GiB of weights into it
//! costs seconds at every start. With zero-copy semantics the plugin may use the caller's
//! memory as the buffer (the XLA CPU client does when the data is dense, row-major and
//! aligned; otherwise it copies, as an accelerator plugin always does). The memory must then
//! stay valid and unchanged for the buffer's whole life, which is why the caller hands over an
//! owner (e.g. a read-only `mmap` of the weight cache) that the [`Buffer`] keeps until it drops.

use std::ops::Range;
use std::ptr;

use super::buffer::{Buffer, HostOwner, RawBuffer, count_h2d};
use super::client::{Client, element_count};
use super::error::{Error, Result, code};
use super::ffi;
use super::plugin::{Event, pjrt_call};
use super::types::ElementType;

impl Client {
    /// A buffer on `device` holding `owner`'s bytes `range` (dense, row-major, little-endian
    /// `ty` elements of shape `dims`), aliasing them where the plugin can. `owner` lives as
    /// long as the returned buffer; its bytes must never change (it is shared read-only).
    pub fn buffer_from_shared(
        &self,
        owner: HostOwner,
        range: Range<usize>,
        ty: ElementType,
        dims: &[i64],
        device: usize,
    ) -> Result<Buffer> {
        let all: &[u8] = (*owner).as_ref();
        let bytes = all.get(range.clone()).ok_or_else(|| {
            Error::invalid(format!(
                "byte range {range:?} outside host data of {} bytes",
                all.len()
            ))
        })?;
        let expected = element_count(dims)?
            .checked_mul(ty.size_bytes())
            .ok_or_else(|| Error::invalid(format!("shape {dims:?} is too large")))?;
        if bytes.len() != expected {
            return Err(Error::invalid(format!(
                "host data has {} bytes but a {ty:?} {dims:?} array needs {expected}",
                bytes.len()
            )));
        }
        let dev = self.inner.device_ptr(device)?;
        let api = self.inner.api();
        let mut a = ffi::PJRT_Client_BufferFromHostBuffer_Args {
            struct_size: ffi::PJRT_Client_BufferFromHostBuffer_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            client: self.inner.raw,
            data: bytes.as_ptr().cast(),
            type_: ty.to_raw(),
            dims: dims.as_ptr(),
            num_dims: dims.len(),
            byte_strides: ptr::null(),
            num_byte_strides: 0,
            host_buffer_semantics: ffi::PJRT_HostBufferSemantics_kImmutableZeroCopy,
            device: dev,
            memory: ptr::null_mut(),
            device_layout: ptr::null_mut(),
            done_with_host_buffer: ptr::null_mut(),
            buffer: ptr::null_mut(),
        };
        pjrt_call!(api, PJRT_Client_BufferFromHostBuffer, &mut a)?;
        // When the plugin aliases the memory this event fires only once the buffer is gone, so
        // it is not awaited: the buffer keeps `owner` alive instead, which covers both a copy
        // still in flight and an alias.
        drop(Event::new(api, a.done_with_host_buffer));
        let raw = RawBuffer::new(self.inner.clone(), a.buffer).ok_or_else(|| {
            Error::local(
                code::INTERNAL,
                "PJRT_Client_BufferFromHostBuffer returned no buffer",
            )
        })?;
        let mut buf = Buffer::from_raw(raw)?;
        buf.keep_host(owner);
        count_h2d(expected as u64);
        Ok(buf)
    }
}
