//! Device buffers and copies back to the host.

use std::cell::Cell;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::client::{ClientInner, element_count};
use super::error::{Error, Result, code};
use super::ffi;
use super::plugin::{Event, pjrt_call};
use super::types::{ElementType, NativeType};

static D2H_BYTES: AtomicU64 = AtomicU64::new(0);
static H2D_BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static D2H_BYTES_THREAD: Cell<u64> = const { Cell::new(0) };
}

/// Bytes copied device -> host by every thread of this process since start.
pub fn d2h_bytes_total() -> u64 {
    D2H_BYTES.load(Ordering::Relaxed)
}

/// Bytes copied device -> host by the calling thread since it started. Unlike
/// [`d2h_bytes_total`], unaffected by other threads (e.g. tests running in parallel).
pub fn d2h_bytes_thread() -> u64 {
    D2H_BYTES_THREAD.with(Cell::get)
}

/// Bytes copied host -> device by every thread of this process since start.
pub fn h2d_bytes_total() -> u64 {
    H2D_BYTES.load(Ordering::Relaxed)
}

fn count_d2h(n: u64) {
    D2H_BYTES.fetch_add(n, Ordering::Relaxed);
    D2H_BYTES_THREAD.with(|c| c.set(c.get() + n));
}

pub(crate) fn count_h2d(n: u64) {
    H2D_BYTES.fetch_add(n, Ordering::Relaxed);
}

/// Sole owner of a `PJRT_Buffer*`; destroys it on drop. Holds the client so that the
/// client outlives every buffer made from it.
pub(crate) struct RawBuffer {
    client: Arc<ClientInner>,
    raw: *mut ffi::PJRT_Buffer,
}

impl RawBuffer {
    /// Takes ownership of `raw`; `None` if it is null.
    pub(crate) fn new(client: Arc<ClientInner>, raw: *mut ffi::PJRT_Buffer) -> Option<RawBuffer> {
        (!raw.is_null()).then_some(RawBuffer { client, raw })
    }
}

impl Drop for RawBuffer {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Buffer_Destroy_Args {
            struct_size: ffi::PJRT_Buffer_Destroy_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            buffer: self.raw,
        };
        if let Err(e) = pjrt_call!(self.client.api(), PJRT_Buffer_Destroy, &mut a) {
            tracing::warn!(error = %e, "PJRT_Buffer_Destroy failed");
        }
    }
}

/// Host memory a zero-copy buffer may alias (see [`super::Client::buffer_from_shared`]).
pub type HostOwner = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// An array on a device. Dropping it frees the device memory.
pub struct Buffer {
    // Declared (so dropped) before `host`: the device buffer is destroyed before the host
    // memory it may alias is released.
    inner: RawBuffer,
    dims: Vec<i64>,
    ty: ElementType,
    /// The host memory a zero-copy upload aliases, kept alive as long as the buffer.
    host: Option<HostOwner>,
}

// SAFETY: `xla::PjRtBuffer` is thread-safe; this wrapper's own fields are immutable after
// construction, and the client it holds is `Send + Sync`.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    /// Wraps an owned buffer, reading its shape and element type once.
    pub(crate) fn from_raw(inner: RawBuffer) -> Result<Buffer> {
        let api = inner.client.api();
        let mut t = ffi::PJRT_Buffer_ElementType_Args {
            struct_size: ffi::PJRT_Buffer_ElementType_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            buffer: inner.raw,
            type_: ffi::PJRT_Buffer_Type_INVALID,
        };
        pjrt_call!(api, PJRT_Buffer_ElementType, &mut t)?;
        let ty = ElementType::from_raw(t.type_).ok_or_else(|| {
            Error::local(
                code::UNIMPLEMENTED,
                format!(
                    "buffer element type {} (PJRT_Buffer_Type) is not supported",
                    t.type_
                ),
            )
        })?;
        let mut d = ffi::PJRT_Buffer_Dimensions_Args {
            struct_size: ffi::PJRT_Buffer_Dimensions_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            buffer: inner.raw,
            dims: ptr::null(),
            num_dims: 0,
        };
        pjrt_call!(api, PJRT_Buffer_Dimensions, &mut d)?;
        let dims = if d.num_dims == 0 {
            Vec::new()
        } else {
            // SAFETY: `num_dims` values owned by the buffer, copied at once.
            unsafe { std::slice::from_raw_parts(d.dims, d.num_dims) }.to_vec()
        };
        Ok(Buffer {
            inner,
            dims,
            ty,
            host: None,
        })
    }

    /// Keeps `owner` alive until the buffer is dropped (a zero-copy upload's host memory).
    pub(crate) fn keep_host(&mut self, owner: HostOwner) {
        self.host = Some(owner);
    }

    pub fn dims(&self) -> &[i64] {
        &self.dims
    }

    pub fn element_type(&self) -> ElementType {
        self.ty
    }

    /// Number of elements (product of the dimensions).
    pub fn element_count(&self) -> usize {
        // Dimensions were accepted by the plugin, so they are non-negative and fit.
        element_count(&self.dims).unwrap_or(0)
    }

    pub fn on_device_size_bytes(&self) -> Result<usize> {
        let mut a = ffi::PJRT_Buffer_OnDeviceSizeInBytes_Args {
            struct_size: ffi::PJRT_Buffer_OnDeviceSizeInBytes_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            buffer: self.inner.raw,
            on_device_size_in_bytes: 0,
        };
        pjrt_call!(
            self.inner.client.api(),
            PJRT_Buffer_OnDeviceSizeInBytes,
            &mut a
        )?;
        Ok(a.on_device_size_in_bytes)
    }

    /// Index (among the client's addressable devices) of the device holding the buffer.
    pub fn device(&self) -> Result<usize> {
        let mut a = ffi::PJRT_Buffer_Device_Args {
            struct_size: ffi::PJRT_Buffer_Device_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            buffer: self.inner.raw,
            device: ptr::null_mut(),
        };
        pjrt_call!(self.inner.client.api(), PJRT_Buffer_Device, &mut a)?;
        self.inner
            .client
            .device_index(a.device)
            .ok_or_else(|| Error::local(code::INTERNAL, "buffer is on a non-addressable device"))
    }

    /// Copies the buffer to another device of the same client (device-to-device; nothing
    /// goes through host memory owned by this process).
    pub fn copy_to_device(&self, device: usize) -> Result<Buffer> {
        let dst = self.inner.client.device_ptr(device)?;
        let mut a = ffi::PJRT_Buffer_CopyToDevice_Args {
            struct_size: ffi::PJRT_Buffer_CopyToDevice_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            buffer: self.inner.raw,
            dst_device: dst,
            dst_buffer: ptr::null_mut(),
        };
        pjrt_call!(self.inner.client.api(), PJRT_Buffer_CopyToDevice, &mut a)?;
        let raw = RawBuffer::new(self.inner.client.clone(), a.dst_buffer).ok_or_else(|| {
            Error::local(
                code::INTERNAL,
                "PJRT_Buffer_CopyToDevice returned no buffer",
            )
        })?;
        Buffer::from_raw(raw)
    }

    /// Blocks until the buffer's contents are computed (or their computation failed).
    pub fn ready(&self) -> Result<()> {
        let mut a = ffi::PJRT_Buffer_ReadyEvent_Args {
            struct_size: ffi::PJRT_Buffer_ReadyEvent_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            buffer: self.inner.raw,
            event: ptr::null_mut(),
        };
        let api = self.inner.client.api();
        pjrt_call!(api, PJRT_Buffer_ReadyEvent, &mut a)?;
        Event::new(api, a.event).wait()
    }

    /// Host size in bytes of the dense array, as the plugin computes it.
    fn host_size(&self) -> Result<usize> {
        let mut a = self.to_host_args(ptr::null_mut(), 0);
        pjrt_call!(self.inner.client.api(), PJRT_Buffer_ToHostBuffer, &mut a)?;
        Ok(a.dst_size)
    }

    fn to_host_args(&self, dst: *mut u8, dst_size: usize) -> ffi::PJRT_Buffer_ToHostBuffer_Args {
        ffi::PJRT_Buffer_ToHostBuffer_Args {
            struct_size: ffi::PJRT_Buffer_ToHostBuffer_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            src: self.inner.raw,
            host_layout: ptr::null_mut(),
            dst: dst.cast(),
            dst_size,
            event: ptr::null_mut(),
        }
    }

    /// Copies `dst.len()` bytes into `dst` and waits for the copy.
    ///
    /// # Safety
    /// `dst` must be valid for `len` byte writes until this returns.
    unsafe fn copy_into(&self, dst: *mut u8, len: usize) -> Result<()> {
        let api = self.inner.client.api();
        let mut a = self.to_host_args(dst, len);
        pjrt_call!(api, PJRT_Buffer_ToHostBuffer, &mut a)?;
        // The plugin writes `dst` asynchronously; nothing may touch or free it before
        // this wait returns.
        Event::new(api, a.event).wait()?;
        count_d2h(len as u64);
        Ok(())
    }

    /// Copies the whole array to the host as raw little-endian element bytes.
    pub fn to_host_bytes(&self) -> Result<Vec<u8>> {
        let len = self.host_size()?;
        let mut out = vec![0u8; len];
        // SAFETY: `out` holds `len` bytes and lives across the call.
        unsafe { self.copy_into(out.as_mut_ptr(), len)? };
        Ok(out)
    }

    /// Copies the whole array to the host as `T` values; `T::TY` must be the buffer's
    /// element type.
    pub fn to_host<T: NativeType>(&self) -> Result<Vec<T>> {
        if T::TY != self.ty {
            return Err(Error::invalid(format!(
                "buffer holds {:?}, not {:?}",
                self.ty,
                T::TY
            )));
        }
        let len = self.host_size()?;
        let n = self.element_count();
        if n * size_of::<T>() != len {
            return Err(Error::local(
                code::INTERNAL,
                format!(
                    "plugin reports {len} host bytes for {n} {:?} elements",
                    self.ty
                ),
            ));
        }
        let mut out: Vec<T> = Vec::with_capacity(n);
        // SAFETY: capacity for `n` elements = `len` bytes; `T` is plain old data with no
        // invalid bit patterns (sealed `NativeType`), so once the plugin has written all
        // `len` bytes every element is initialized.
        unsafe {
            self.copy_into(out.as_mut_ptr().cast::<u8>(), len)?;
            out.set_len(n);
        }
        Ok(out)
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("ty", &self.ty)
            .field("dims", &self.dims)
            .finish()
    }
}

pub(crate) fn raw_ptr(b: &Buffer) -> *mut ffi::PJRT_Buffer {
    b.inner.raw
}

pub(crate) fn same_client(b: &Buffer, client: &Arc<ClientInner>) -> bool {
    Arc::ptr_eq(&b.inner.client, client)
}
