//! Compiled programs loaded on a client: execution and (de)serialization.

use std::ptr;
use std::sync::Arc;

use super::buffer::{Buffer, RawBuffer, raw_ptr, same_client};
use super::client::ClientInner;
use super::error::{Error, Result, code};
use super::ffi;
use super::plugin::{Api, Event, pjrt_call};

/// A compiled program. Compiled portable (bound to no device), so it runs on whichever
/// addressable device [`LoadedExecutable::execute_on`] names: one compilation serves every
/// device of its client. Cheap to clone (a shared handle); the plugin's executable is
/// destroyed with the last clone.
#[derive(Clone)]
pub struct LoadedExecutable {
    pub(super) inner: Arc<ExecutableInner>,
}

/// Sole owner of a `PJRT_LoadedExecutable*`.
pub(super) struct ExecutableInner {
    client: Arc<ClientInner>,
    raw: *mut ffi::PJRT_LoadedExecutable,
    num_outputs: usize,
}

// SAFETY: `xla::PjRtLoadedExecutable` is thread-safe (concurrent executions, on one device
// or several, are supported); this wrapper's fields are immutable after construction.
unsafe impl Send for ExecutableInner {}
unsafe impl Sync for ExecutableInner {}

/// Owns a `PJRT_Executable*` (the unloaded view of a loaded executable).
struct ExecutableView {
    api: Api,
    raw: *mut ffi::PJRT_Executable,
}

impl Drop for ExecutableView {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Executable_Destroy_Args {
            struct_size: ffi::PJRT_Executable_Destroy_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            executable: self.raw,
        };
        if let Err(e) = pjrt_call!(self.api, PJRT_Executable_Destroy, &mut a) {
            tracing::warn!(error = %e, "PJRT_Executable_Destroy failed");
        }
    }
}

impl LoadedExecutable {
    /// Takes ownership of `raw` (destroyed on every path) and reads its output count.
    pub(crate) fn from_raw(
        client: Arc<ClientInner>,
        raw: *mut ffi::PJRT_LoadedExecutable,
    ) -> Result<LoadedExecutable> {
        if raw.is_null() {
            return Err(Error::local(
                code::INTERNAL,
                "the plugin returned no executable",
            ));
        }
        let mut exe = ExecutableInner {
            client,
            raw,
            num_outputs: 0,
        };
        let view = exe.view()?;
        let mut a = ffi::PJRT_Executable_NumOutputs_Args {
            struct_size: ffi::PJRT_Executable_NumOutputs_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            executable: view.raw,
            num_outputs: 0,
        };
        pjrt_call!(view.api, PJRT_Executable_NumOutputs, &mut a)?;
        exe.num_outputs = a.num_outputs;
        drop(view);
        Ok(LoadedExecutable {
            inner: Arc::new(exe),
        })
    }

    /// Number of results the program returns (its outputs are untupled).
    pub fn num_outputs(&self) -> Result<usize> {
        Ok(self.inner.num_outputs)
    }

    /// Runs on device 0; see [`LoadedExecutable::execute_on`].
    pub fn execute(&self, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        self.execute_on(0, args)
    }

    /// Runs on addressable device `device` and waits for completion. Every argument must
    /// live on that device. Arguments are never donated: they are only borrowed, so the
    /// caller can keep using them (weights stay resident across calls).
    pub fn execute_on(&self, device: usize, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        self.inner.execute_on(device, args)
    }

    /// Plugin-specific bytes that [`super::Client::deserialize_executable`] loads back
    /// (same plugin build only). Loading these bytes again on the same client while this
    /// executable lives returns this executable instead of a second copy.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let bytes = self.inner.serialize()?;
        self.inner
            .client
            .executables
            .remember_serialized(&bytes, self);
        Ok(bytes)
    }
}

impl ExecutableInner {
    fn view(&self) -> Result<ExecutableView> {
        let api = self.client.api();
        let mut a = ffi::PJRT_LoadedExecutable_GetExecutable_Args {
            struct_size: ffi::PJRT_LoadedExecutable_GetExecutable_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            loaded_executable: self.raw,
            executable: ptr::null_mut(),
        };
        pjrt_call!(api, PJRT_LoadedExecutable_GetExecutable, &mut a)?;
        if a.executable.is_null() {
            return Err(Error::local(
                code::INTERNAL,
                "PJRT_LoadedExecutable_GetExecutable returned null",
            ));
        }
        Ok(ExecutableView {
            api,
            raw: a.executable,
        })
    }

    fn execute_on(&self, device: usize, args: &[&Buffer]) -> Result<Vec<Buffer>> {
        let dev = self.client.device_ptr(device)?;
        if let Some(i) = args.iter().position(|b| !same_client(b, &self.client)) {
            return Err(Error::invalid(format!(
                "argument {i} belongs to another PJRT client"
            )));
        }
        let api = self.client.api();
        let arg_ptrs: Vec<*mut ffi::PJRT_Buffer> = args.iter().map(|b| raw_ptr(b)).collect();
        let arg_lists: [*const *mut ffi::PJRT_Buffer; 1] = [arg_ptrs.as_ptr()];
        let mut outputs: Vec<*mut ffi::PJRT_Buffer> = vec![ptr::null_mut(); self.num_outputs];
        let output_lists: [*mut *mut ffi::PJRT_Buffer; 1] = [outputs.as_mut_ptr()];
        let mut complete: [*mut ffi::PJRT_Event; 1] = [ptr::null_mut()];
        let non_donatable: Vec<i64> = (0..args.len() as i64).collect();
        let mut options = ffi::PJRT_ExecuteOptions {
            struct_size: ffi::PJRT_ExecuteOptions::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            send_callbacks: ptr::null_mut(),
            recv_callbacks: ptr::null_mut(),
            num_send_ops: 0,
            num_recv_ops: 0,
            launch_id: 0,
            non_donatable_input_indices: non_donatable.as_ptr(),
            num_non_donatable_input_indices: non_donatable.len(),
            context: ptr::null_mut(),
            call_location: ptr::null(),
            num_tasks: 0,
            task_ids: ptr::null_mut(),
            incarnation_ids: ptr::null_mut(),
            multi_slice_config: ptr::null_mut(),
            use_major_to_minor_data_layout_for_callbacks: false,
            hlo_output_callbacks: ptr::null_mut(),
            num_hlo_output_callbacks: 0,
        };
        let mut a = ffi::PJRT_LoadedExecutable_Execute_Args {
            struct_size: ffi::PJRT_LoadedExecutable_Execute_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            executable: self.raw,
            options: &mut options,
            argument_lists: arg_lists.as_ptr(),
            num_devices: 1,
            num_args: args.len(),
            output_lists: output_lists.as_ptr(),
            device_complete_events: complete.as_mut_ptr(),
            execute_device: dev,
        };
        pjrt_call!(api, PJRT_LoadedExecutable_Execute, &mut a)?;
        // Own every output before anything can fail, so none leaks.
        let owned: Vec<Option<RawBuffer>> = outputs
            .iter()
            .map(|&p| RawBuffer::new(self.client.clone(), p))
            .collect();
        Event::new(api, complete[0]).wait()?;
        owned
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let raw = raw.ok_or_else(|| {
                    Error::local(code::INTERNAL, format!("execution produced no output {i}"))
                })?;
                Buffer::from_raw(raw)
            })
            .collect()
    }

    fn serialize(&self) -> Result<Vec<u8>> {
        let view = self.view()?;
        let mut a = ffi::PJRT_Executable_Serialize_Args {
            struct_size: ffi::PJRT_Executable_Serialize_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            executable: view.raw,
            serialized_bytes: ptr::null(),
            serialized_bytes_size: 0,
            serialized_executable: ptr::null_mut(),
            serialized_executable_deleter: None,
        };
        pjrt_call!(view.api, PJRT_Executable_Serialize, &mut a)?;
        let bytes = if a.serialized_bytes.is_null() {
            Vec::new()
        } else {
            // SAFETY: the bytes live as long as `serialized_executable`, freed just below.
            unsafe {
                std::slice::from_raw_parts(a.serialized_bytes.cast::<u8>(), a.serialized_bytes_size)
            }
            .to_vec()
        };
        if let Some(deleter) = a.serialized_executable_deleter {
            // SAFETY: called exactly once on the object the plugin handed us.
            unsafe { deleter(a.serialized_executable) };
        }
        if bytes.is_empty() {
            return Err(Error::local(
                code::INTERNAL,
                "PJRT_Executable_Serialize returned no bytes",
            ));
        }
        Ok(bytes)
    }
}

impl Drop for ExecutableInner {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_LoadedExecutable_Destroy_Args {
            struct_size: ffi::PJRT_LoadedExecutable_Destroy_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            executable: self.raw,
        };
        if let Err(e) = pjrt_call!(self.client.api(), PJRT_LoadedExecutable_Destroy, &mut a) {
            tracing::warn!(error = %e, "PJRT_LoadedExecutable_Destroy failed");
        }
    }
}

impl std::fmt::Debug for LoadedExecutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedExecutable")
            .field("num_outputs", &self.inner.num_outputs)
            .finish()
    }
}
