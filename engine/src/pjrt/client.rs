//! A PJRT client: the devices of one plugin instance, host-to-device copies and
//! compilation.

use std::ffi::c_char;
use std::ptr;
use std::sync::Arc;

use super::buffer::{Buffer, RawBuffer, count_h2d};
use super::error::{Error, Result, code};
use super::executable::LoadedExecutable;
use super::ffi;
use super::options::ClientOptions;
use super::plugin::{Api, Event, Plugin, copy_str, pjrt_call};
use super::shared::{ExecutableMemo, Source};
use super::types::{ElementType, NativeType};

/// Serialized `xla.CompileOptionsProto`:
/// `executable_build_options { num_replicas: 1 num_partitions: 1 }` (field 3: `1a 04 20 01
/// 28 01`) and `compile_portable_executable: true` (field 4: `20 01`). Empty options crash
/// the CPU plugin (zero replicas). A portable executable is bound to no device at compile
/// time, so one compilation can run on any addressable device through `execute_device`.
pub(crate) const COMPILE_OPTIONS: &[u8] = &[0x1a, 0x04, 0x20, 0x01, 0x28, 0x01, 0x20, 0x01];

/// One addressable device of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    index: usize,
    id: i32,
    local_hardware_id: i32,
    kind: String,
    debug_string: String,
}

impl Device {
    /// Position among the client's addressable devices: the `device` argument of
    /// [`Client::buffer_from_host`] and [`LoadedExecutable::execute_on`].
    pub fn index(&self) -> usize {
        self.index
    }
    /// `PJRT_DeviceDescription_Id`: unique among devices of this platform.
    pub fn id(&self) -> i32 {
        self.id
    }
    pub fn local_hardware_id(&self) -> i32 {
        self.local_hardware_id
    }
    /// Vendor string for the kind of device (`"cpu"` on the CPU plugin).
    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn debug_string(&self) -> &str {
        &self.debug_string
    }
}

pub(crate) struct ClientInner {
    pub(crate) plugin: Plugin,
    pub(crate) raw: *mut ffi::PJRT_Client,
    device_ptrs: Vec<*mut ffi::PJRT_Device>,
    devices: Vec<Device>,
    /// Every live executable of this client, by program (one compilation for all devices).
    pub(crate) executables: ExecutableMemo,
}

// SAFETY: a PJRT client wraps `xla::PjRtClient`, whose methods are thread-safe; the
// device pointers are owned by the client and immutable for its lifetime. This wrapper
// adds no unsynchronized state of its own.
unsafe impl Send for ClientInner {}
unsafe impl Sync for ClientInner {}

impl ClientInner {
    pub(crate) fn api(&self) -> Api {
        self.plugin.api()
    }

    pub(crate) fn device_ptr(&self, index: usize) -> Result<*mut ffi::PJRT_Device> {
        self.device_ptrs.get(index).copied().ok_or_else(|| {
            Error::local(
                code::OUT_OF_RANGE,
                format!(
                    "device index {index} out of range: the client has {} addressable devices",
                    self.device_ptrs.len()
                ),
            )
        })
    }

    pub(crate) fn device_index(&self, ptr: *mut ffi::PJRT_Device) -> Option<usize> {
        self.device_ptrs.iter().position(|&p| p == ptr)
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        let mut a = ffi::PJRT_Client_Destroy_Args {
            struct_size: ffi::PJRT_Client_Destroy_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            client: self.raw,
        };
        if let Err(e) = pjrt_call!(self.api(), PJRT_Client_Destroy, &mut a) {
            tracing::warn!(error = %e, "PJRT_Client_Destroy failed");
        }
    }
}

/// A PJRT client. Cheap to clone (shared, also across threads: one client serves every
/// device of a worker); buffers and executables keep it alive.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

/// A plugin-specific client creation option (`PJRT_NamedValue`), e.g. the CPU plugin's
/// `cpu_device_count` (Int64), or a GPU plugin's `preallocate` / `memory_fraction`.
///
/// Pass the type the plugin expects: the CPU plugin ignores unknown names, and a known
/// name with the wrong value type makes it throw a C++ exception through the C API,
/// which aborts the process (Rust cannot catch foreign exceptions).
#[derive(Debug, Clone, PartialEq)]
pub enum ClientOption {
    String(String),
    Int64(i64),
    Int64List(Vec<i64>),
    Float(f32),
    Bool(bool),
}

impl Client {
    /// Creates a client with the plugin's default options.
    pub fn new(plugin: &Plugin) -> Result<Client> {
        Client::with_options(plugin, &[])
    }

    /// Creates a client with typed options (see [`ClientOptions`]).
    pub fn with_client_options(plugin: &Plugin, options: &ClientOptions) -> Result<Client> {
        let named = options.named_values();
        let refs: Vec<(&str, ClientOption)> =
            named.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        Client::with_options(plugin, &refs)
    }

    /// Creates a client with plugin-specific options (see [`ClientOption`] for the
    /// caveats on names and types).
    pub fn with_options(plugin: &Plugin, options: &[(&str, ClientOption)]) -> Result<Client> {
        let api = plugin.api();
        // Every pointer below borrows from `options`, which outlives the call.
        let named: Vec<ffi::PJRT_NamedValue> = options
            .iter()
            .map(|(name, value)| {
                let (type_, value, value_size) = match value {
                    ClientOption::String(s) => (
                        ffi::PJRT_NamedValue_kString,
                        ffi::PJRT_NamedValue_Value {
                            string_value: s.as_ptr().cast(),
                        },
                        s.len(),
                    ),
                    ClientOption::Int64(v) => (
                        ffi::PJRT_NamedValue_kInt64,
                        ffi::PJRT_NamedValue_Value { int64_value: *v },
                        1,
                    ),
                    ClientOption::Int64List(v) => (
                        ffi::PJRT_NamedValue_kInt64List,
                        ffi::PJRT_NamedValue_Value {
                            int64_array_value: v.as_ptr(),
                        },
                        v.len(),
                    ),
                    ClientOption::Float(v) => (
                        ffi::PJRT_NamedValue_kFloat,
                        ffi::PJRT_NamedValue_Value { float_value: *v },
                        1,
                    ),
                    ClientOption::Bool(v) => (
                        ffi::PJRT_NamedValue_kBool,
                        ffi::PJRT_NamedValue_Value { bool_value: *v },
                        1,
                    ),
                };
                ffi::PJRT_NamedValue {
                    struct_size: ffi::PJRT_NamedValue::STRUCT_SIZE,
                    extension_start: ptr::null_mut(),
                    name: name.as_ptr().cast(),
                    name_size: name.len(),
                    type_,
                    value,
                    value_size,
                }
            })
            .collect();
        let mut a = ffi::PJRT_Client_Create_Args {
            struct_size: ffi::PJRT_Client_Create_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            create_options: if named.is_empty() {
                ptr::null()
            } else {
                named.as_ptr()
            },
            num_options: named.len(),
            kv_get_callback: ptr::null_mut(),
            kv_get_user_arg: ptr::null_mut(),
            kv_put_callback: ptr::null_mut(),
            kv_put_user_arg: ptr::null_mut(),
            client: ptr::null_mut(),
            kv_try_get_callback: ptr::null_mut(),
            kv_try_get_user_arg: ptr::null_mut(),
        };
        pjrt_call!(api, PJRT_Client_Create, &mut a)?;
        if a.client.is_null() {
            return Err(Error::local(
                code::INTERNAL,
                "PJRT_Client_Create returned no client",
            ));
        }
        // Own the client before anything else can fail, so it is destroyed on error.
        let mut inner = ClientInner {
            plugin: plugin.clone(),
            raw: a.client,
            device_ptrs: Vec::new(),
            devices: Vec::new(),
            executables: ExecutableMemo::default(),
        };
        let mut d = ffi::PJRT_Client_AddressableDevices_Args {
            struct_size: ffi::PJRT_Client_AddressableDevices_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            client: inner.raw,
            addressable_devices: ptr::null(),
            num_addressable_devices: 0,
        };
        pjrt_call!(api, PJRT_Client_AddressableDevices, &mut d)?;
        for index in 0..d.num_addressable_devices {
            // SAFETY: the plugin returned an array of `num_addressable_devices` pointers
            // owned by the client.
            let dev = unsafe { *d.addressable_devices.add(index) };
            inner.devices.push(describe_device(api, dev, index)?);
            inner.device_ptrs.push(dev);
        }
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    pub fn plugin(&self) -> &Plugin {
        &self.inner.plugin
    }

    /// `"cpu"`, `"cuda"`, `"tpu"`, ...
    pub fn platform_name(&self) -> Result<String> {
        let mut a = ffi::PJRT_Client_PlatformName_Args {
            struct_size: ffi::PJRT_Client_PlatformName_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            client: self.inner.raw,
            platform_name: ptr::null(),
            platform_name_size: 0,
        };
        pjrt_call!(self.inner.api(), PJRT_Client_PlatformName, &mut a)?;
        // SAFETY: owned by the client, which outlives this call.
        Ok(unsafe { copy_str(a.platform_name, a.platform_name_size) })
    }

    pub fn platform_version(&self) -> Result<String> {
        let mut a = ffi::PJRT_Client_PlatformVersion_Args {
            struct_size: ffi::PJRT_Client_PlatformVersion_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            client: self.inner.raw,
            platform_version: ptr::null(),
            platform_version_size: 0,
        };
        pjrt_call!(self.inner.api(), PJRT_Client_PlatformVersion, &mut a)?;
        // SAFETY: owned by the client, which outlives this call.
        Ok(unsafe { copy_str(a.platform_version, a.platform_version_size) })
    }

    /// The addressable devices, in the plugin's order (`Device::index` is the position).
    pub fn devices(&self) -> Vec<Device> {
        self.inner.devices.clone()
    }

    pub fn device_count(&self) -> usize {
        self.inner.devices.len()
    }

    /// Copies `data` (dense, row-major, `dims` shape) to device `device`.
    pub fn buffer_from_host<T: NativeType>(
        &self,
        data: &[T],
        dims: &[i64],
        device: usize,
    ) -> Result<Buffer> {
        // SAFETY: `NativeType` implementors are plain old data, so viewing them as bytes
        // is sound.
        let bytes = unsafe {
            std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data))
        };
        self.buffer_from_bytes(bytes, T::TY, dims, device)
    }

    /// Copies raw little-endian element bytes (dense, row-major) to device `device`.
    /// Returns once the plugin is done reading `bytes`.
    pub fn buffer_from_bytes(
        &self,
        bytes: &[u8],
        ty: ElementType,
        dims: &[i64],
        device: usize,
    ) -> Result<Buffer> {
        let elements = element_count(dims)?;
        let expected = elements
            .checked_mul(ty.size_bytes())
            .ok_or_else(|| Error::invalid(format!("shape {dims:?} is too large")))?;
        if bytes.len() != expected {
            return Err(Error::invalid(format!(
                "host data has {} bytes but a {:?} {dims:?} array needs {expected}",
                bytes.len(),
                ty
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
            // The plugin may read `bytes` after returning; we wait for
            // `done_with_host_buffer` below before `bytes` can be released.
            host_buffer_semantics: ffi::PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes,
            device: dev,
            memory: ptr::null_mut(),
            device_layout: ptr::null_mut(),
            done_with_host_buffer: ptr::null_mut(),
            buffer: ptr::null_mut(),
        };
        pjrt_call!(api, PJRT_Client_BufferFromHostBuffer, &mut a)?;
        let done = Event::new(api, a.done_with_host_buffer);
        let raw = RawBuffer::new(self.inner.clone(), a.buffer);
        // Blocking here is what keeps `bytes` borrowed until the plugin has copied it.
        done.wait()?;
        let raw = raw.ok_or_else(|| {
            Error::local(
                code::INTERNAL,
                "PJRT_Client_BufferFromHostBuffer returned no buffer",
            )
        })?;
        count_h2d(expected as u64);
        Buffer::from_raw(raw)
    }

    /// Compiles a StableHLO module given as MLIR text. The executable can run on any of
    /// the client's devices (see [`LoadedExecutable::execute_on`]); [`LoadedExecutable::execute`]
    /// uses device 0. While an executable of the same text lives (another device's model
    /// compiled it), that one is returned and the plugin compiles nothing; a caller asking
    /// while it is being compiled waits for it.
    pub fn compile(&self, mlir: &str) -> Result<LoadedExecutable> {
        self.inner
            .executables
            .get_or_make(Source::Mlir(mlir, COMPILE_OPTIONS), || {
                self.compile_uncached(mlir)
            })
    }

    fn compile_uncached(&self, mlir: &str) -> Result<LoadedExecutable> {
        const FORMAT: &str = "mlir";
        let program = ffi::PJRT_Program {
            struct_size: ffi::PJRT_Program::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            // The plugin only reads `code` during Compile despite the non-const type.
            code: mlir.as_ptr().cast::<c_char>().cast_mut(),
            code_size: mlir.len(),
            format: FORMAT.as_ptr().cast(),
            format_size: FORMAT.len(),
        };
        let mut a = ffi::PJRT_Client_Compile_Args {
            struct_size: ffi::PJRT_Client_Compile_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            client: self.inner.raw,
            program: &program,
            compile_options: COMPILE_OPTIONS.as_ptr().cast(),
            compile_options_size: COMPILE_OPTIONS.len(),
            executable: ptr::null_mut(),
        };
        pjrt_call!(self.inner.api(), PJRT_Client_Compile, &mut a)?;
        LoadedExecutable::from_raw(self.inner.clone(), a.executable)
    }

    /// Loads an executable produced by [`LoadedExecutable::serialize`] with the same
    /// plugin build. Like [`Client::compile`], bytes of an executable this client still
    /// holds give that executable back.
    pub fn deserialize_executable(&self, bytes: &[u8]) -> Result<LoadedExecutable> {
        self.inner
            .executables
            .get_or_make(Source::Serialized(bytes), || {
                self.deserialize_uncached(bytes)
            })
    }

    fn deserialize_uncached(&self, bytes: &[u8]) -> Result<LoadedExecutable> {
        let mut a = ffi::PJRT_Executable_DeserializeAndLoad_Args {
            struct_size: ffi::PJRT_Executable_DeserializeAndLoad_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            client: self.inner.raw,
            serialized_executable: bytes.as_ptr().cast(),
            serialized_executable_size: bytes.len(),
            loaded_executable: ptr::null_mut(),
            // Null: keep the options stored in the serialized executable (portable).
            overridden_serialized_compile_options: ptr::null(),
            overridden_serialized_compile_options_size: 0,
            load_options: ptr::null_mut(),
        };
        pjrt_call!(self.inner.api(), PJRT_Executable_DeserializeAndLoad, &mut a)?;
        LoadedExecutable::from_raw(self.inner.clone(), a.loaded_executable)
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("plugin", &self.inner.plugin)
            .field("devices", &self.inner.devices.len())
            .finish()
    }
}

pub(crate) fn element_count(dims: &[i64]) -> Result<usize> {
    dims.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d)
            .map_err(|_| Error::invalid(format!("negative dimension in shape {dims:?}")))?;
        acc.checked_mul(d)
            .ok_or_else(|| Error::invalid(format!("shape {dims:?} is too large")))
    })
}

fn describe_device(api: Api, dev: *mut ffi::PJRT_Device, index: usize) -> Result<Device> {
    let mut g = ffi::PJRT_Device_GetDescription_Args {
        struct_size: ffi::PJRT_Device_GetDescription_Args::STRUCT_SIZE,
        extension_start: ptr::null_mut(),
        device: dev,
        device_description: ptr::null_mut(),
    };
    pjrt_call!(api, PJRT_Device_GetDescription, &mut g)?;
    let desc = g.device_description;
    let mut id = ffi::PJRT_DeviceDescription_Id_Args {
        struct_size: ffi::PJRT_DeviceDescription_Id_Args::STRUCT_SIZE,
        extension_start: ptr::null_mut(),
        device_description: desc,
        id: 0,
    };
    pjrt_call!(api, PJRT_DeviceDescription_Id, &mut id)?;
    let mut kind = ffi::PJRT_DeviceDescription_Kind_Args {
        struct_size: ffi::PJRT_DeviceDescription_Kind_Args::STRUCT_SIZE,
        extension_start: ptr::null_mut(),
        device_description: desc,
        device_kind: ptr::null(),
        device_kind_size: 0,
    };
    pjrt_call!(api, PJRT_DeviceDescription_Kind, &mut kind)?;
    let mut dbg = ffi::PJRT_DeviceDescription_DebugString_Args {
        struct_size: ffi::PJRT_DeviceDescription_DebugString_Args::STRUCT_SIZE,
        extension_start: ptr::null_mut(),
        device_description: desc,
        debug_string: ptr::null(),
        debug_string_size: 0,
    };
    pjrt_call!(api, PJRT_DeviceDescription_DebugString, &mut dbg)?;
    let mut hw = ffi::PJRT_Device_LocalHardwareId_Args {
        struct_size: ffi::PJRT_Device_LocalHardwareId_Args::STRUCT_SIZE,
        extension_start: ptr::null_mut(),
        device: dev,
        local_hardware_id: -1,
    };
    pjrt_call!(api, PJRT_Device_LocalHardwareId, &mut hw)?;
    Ok(Device {
        index,
        id: id.id,
        local_hardware_id: hw.local_hardware_id,
        // SAFETY: strings owned by the device description, alive with the client.
        kind: unsafe { copy_str(kind.device_kind, kind.device_kind_size) },
        // SAFETY: as above.
        debug_string: unsafe { copy_str(dbg.debug_string, dbg.debug_string_size) },
    })
}
