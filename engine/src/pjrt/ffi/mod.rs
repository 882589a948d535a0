//! Raw `#[repr(C)]` declarations for the subset of the PJRT C API this crate uses.
//!
//! Transcribed from `pjrt_c_api.h` API version 0.113 (openxla/xla as vendored by
//! zml/xla, the newest header text found; the `xla-cpu-pjrt` 0.0.1 wheel ships 0.81, the
//! `jax-cuda13-pjrt` 0.11.2 plugin reports 0.115 with the same 138-slot table). Field order and types follow the header exactly;
//! every argument struct carries `STRUCT_SIZE`, computed the way the header's
//! `PJRT_STRUCT_SIZE(type, last_field)` macro does (offset of the last field plus its
//! size, i.e. without trailing padding), because plugins compare `struct_size`
//! against their own value and refuse smaller structs.
//!
//! The `PJRT_Api` function table ([`table`]) declares every slot of 0.113 in order: a
//! slot we do not call is still declared (as an untyped pointer) so that the offsets of
//! later slots are right.
//!
//! A plugin checks each argument struct with `struct_size >= its minimum` and ignores
//! trailing fields it does not know, so structs declared at a newer layout than the
//! plugin's work (fields it does not read are zeroed); [`minimum_sizes`] records what
//! the CUDA 0.115 plugin demands.

#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code
)]

use std::ffi::{c_char, c_int, c_void};

/// `PJRT_STRUCT_SIZE(S, field)`: offset of `field` plus its size, without the trailing
/// padding that `size_of::<S>()` may add.
macro_rules! struct_size {
    ($s:ty, $f:ident) => {{
        const fn pointee_size<T>(_: *const T) -> usize {
            ::core::mem::size_of::<T>()
        }
        let u = ::core::mem::MaybeUninit::<$s>::uninit();
        let p = u.as_ptr();
        // SAFETY: only the address of the field is taken; nothing is read.
        ::core::mem::offset_of!($s, $f) + pointee_size(unsafe { ::core::ptr::addr_of!((*p).$f) })
    }};
}

macro_rules! impl_struct_size {
    ($($s:ident => $f:ident),* $(,)?) => {
        $(impl $s {
            pub const STRUCT_SIZE: usize = struct_size!($s, $f);
        })*
    };
}

// Opaque handles.
#[repr(C)]
pub struct PJRT_Error {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Event {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Client {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Device {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Memory {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_DeviceDescription {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Executable {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_LoadedExecutable {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Buffer {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_SerializedExecutable {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_ExecuteContext {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_Buffer_MemoryLayout {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_SendCallbackInfo {
    _private: [u8; 0],
}
#[repr(C)]
pub struct PJRT_RecvCallbackInfo {
    _private: [u8; 0],
}

#[repr(C)]
pub struct PJRT_Extension_Base {
    pub struct_size: usize,
    pub type_: c_int,
    pub next: *mut PJRT_Extension_Base,
}

// C enums are `int`-sized on every ABI PJRT plugins are built for.
pub type PJRT_Error_Code = c_int;
pub type PJRT_Buffer_Type = c_int;
pub type PJRT_HostBufferSemantics = c_int;
pub type PJRT_NamedValue_Type = c_int;

pub const PJRT_Buffer_Type_INVALID: PJRT_Buffer_Type = 0;
pub const PJRT_Buffer_Type_PRED: PJRT_Buffer_Type = 1;
pub const PJRT_Buffer_Type_S8: PJRT_Buffer_Type = 2;
pub const PJRT_Buffer_Type_S16: PJRT_Buffer_Type = 3;
pub const PJRT_Buffer_Type_S32: PJRT_Buffer_Type = 4;
pub const PJRT_Buffer_Type_S64: PJRT_Buffer_Type = 5;
pub const PJRT_Buffer_Type_U8: PJRT_Buffer_Type = 6;
pub const PJRT_Buffer_Type_U16: PJRT_Buffer_Type = 7;
pub const PJRT_Buffer_Type_U32: PJRT_Buffer_Type = 8;
pub const PJRT_Buffer_Type_U64: PJRT_Buffer_Type = 9;
pub const PJRT_Buffer_Type_F16: PJRT_Buffer_Type = 10;
pub const PJRT_Buffer_Type_F32: PJRT_Buffer_Type = 11;
pub const PJRT_Buffer_Type_F64: PJRT_Buffer_Type = 12;
pub const PJRT_Buffer_Type_BF16: PJRT_Buffer_Type = 13;

pub const PJRT_HostBufferSemantics_kImmutableOnlyDuringCall: PJRT_HostBufferSemantics = 0;
pub const PJRT_HostBufferSemantics_kImmutableUntilTransferCompletes: PJRT_HostBufferSemantics = 1;
pub const PJRT_HostBufferSemantics_kImmutableZeroCopy: PJRT_HostBufferSemantics = 2;
pub const PJRT_HostBufferSemantics_kMutableZeroCopy: PJRT_HostBufferSemantics = 3;

pub const PJRT_NamedValue_kString: PJRT_NamedValue_Type = 0;
pub const PJRT_NamedValue_kInt64: PJRT_NamedValue_Type = 1;
pub const PJRT_NamedValue_kInt64List: PJRT_NamedValue_Type = 2;
pub const PJRT_NamedValue_kFloat: PJRT_NamedValue_Type = 3;
pub const PJRT_NamedValue_kBool: PJRT_NamedValue_Type = 4;

#[repr(C)]
pub struct PJRT_Api_Version {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub major_version: c_int,
    pub minor_version: c_int,
}

// ---------------------------------- Errors -----------------------------------

#[repr(C)]
pub struct PJRT_Error_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub error: *mut PJRT_Error,
}

#[repr(C)]
pub struct PJRT_Error_Message_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub error: *const PJRT_Error,
    pub message: *const c_char,
    pub message_size: usize,
}

#[repr(C)]
pub struct PJRT_Error_GetCode_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub error: *const PJRT_Error,
    pub code: PJRT_Error_Code,
}

// ------------------------------- Named values --------------------------------

#[repr(C)]
#[derive(Clone, Copy)]
pub union PJRT_NamedValue_Value {
    pub string_value: *const c_char,
    pub int64_value: i64,
    pub int64_array_value: *const i64,
    pub float_value: f32,
    pub bool_value: bool,
}

#[repr(C)]
pub struct PJRT_NamedValue {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub name: *const c_char,
    pub name_size: usize,
    pub type_: PJRT_NamedValue_Type,
    pub value: PJRT_NamedValue_Value,
    pub value_size: usize,
}

// ---------------------------------- Plugin -----------------------------------

#[repr(C)]
pub struct PJRT_Plugin_Initialize_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
}

#[repr(C)]
pub struct PJRT_Plugin_Attributes_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub attributes: *const PJRT_NamedValue,
    pub num_attributes: usize,
}

// ---------------------------------- Events -----------------------------------

#[repr(C)]
pub struct PJRT_Event_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub event: *mut PJRT_Event,
}

#[repr(C)]
pub struct PJRT_Event_Await_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub event: *mut PJRT_Event,
}

// ---------------------------------- Client -----------------------------------

#[repr(C)]
pub struct PJRT_Client_Create_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub create_options: *const PJRT_NamedValue,
    pub num_options: usize,
    pub kv_get_callback: *mut c_void,
    pub kv_get_user_arg: *mut c_void,
    pub kv_put_callback: *mut c_void,
    pub kv_put_user_arg: *mut c_void,
    pub client: *mut PJRT_Client,
    pub kv_try_get_callback: *mut c_void,
    pub kv_try_get_user_arg: *mut c_void,
}

#[repr(C)]
pub struct PJRT_Client_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub client: *mut PJRT_Client,
}

#[repr(C)]
pub struct PJRT_Client_PlatformName_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub client: *mut PJRT_Client,
    pub platform_name: *const c_char,
    pub platform_name_size: usize,
}

#[repr(C)]
pub struct PJRT_Client_PlatformVersion_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub client: *mut PJRT_Client,
    pub platform_version: *const c_char,
    pub platform_version_size: usize,
}

#[repr(C)]
pub struct PJRT_Client_AddressableDevices_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub client: *mut PJRT_Client,
    pub addressable_devices: *const *mut PJRT_Device,
    pub num_addressable_devices: usize,
}

#[repr(C)]
pub struct PJRT_Program {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub code: *mut c_char,
    pub code_size: usize,
    pub format: *const c_char,
    pub format_size: usize,
}

#[repr(C)]
pub struct PJRT_Client_Compile_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub client: *mut PJRT_Client,
    pub program: *const PJRT_Program,
    pub compile_options: *const c_char,
    pub compile_options_size: usize,
    pub executable: *mut PJRT_LoadedExecutable,
}

#[repr(C)]
pub struct PJRT_Client_BufferFromHostBuffer_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub client: *mut PJRT_Client,
    pub data: *const c_void,
    pub type_: PJRT_Buffer_Type,
    pub dims: *const i64,
    pub num_dims: usize,
    pub byte_strides: *const i64,
    pub num_byte_strides: usize,
    pub host_buffer_semantics: PJRT_HostBufferSemantics,
    pub device: *mut PJRT_Device,
    pub memory: *mut PJRT_Memory,
    pub device_layout: *mut PJRT_Buffer_MemoryLayout,
    pub done_with_host_buffer: *mut PJRT_Event,
    pub buffer: *mut PJRT_Buffer,
}

// ---------------------------- Device descriptions ----------------------------

#[repr(C)]
pub struct PJRT_DeviceDescription_Id_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub device_description: *mut PJRT_DeviceDescription,
    pub id: c_int,
}

#[repr(C)]
pub struct PJRT_DeviceDescription_Kind_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub device_description: *mut PJRT_DeviceDescription,
    pub device_kind: *const c_char,
    pub device_kind_size: usize,
}

#[repr(C)]
pub struct PJRT_DeviceDescription_DebugString_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub device_description: *mut PJRT_DeviceDescription,
    pub debug_string: *const c_char,
    pub debug_string_size: usize,
}

// --------------------------------- Devices -----------------------------------

#[repr(C)]
pub struct PJRT_Device_GetDescription_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub device: *mut PJRT_Device,
    pub device_description: *mut PJRT_DeviceDescription,
}

#[repr(C)]
pub struct PJRT_Device_LocalHardwareId_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub device: *mut PJRT_Device,
    pub local_hardware_id: c_int,
}

// ------------------------------- Executables ---------------------------------

#[repr(C)]
pub struct PJRT_Executable_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub executable: *mut PJRT_Executable,
}

#[repr(C)]
pub struct PJRT_LoadedExecutable_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub executable: *mut PJRT_LoadedExecutable,
}

#[repr(C)]
pub struct PJRT_LoadedExecutable_GetExecutable_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub loaded_executable: *mut PJRT_LoadedExecutable,
    pub executable: *mut PJRT_Executable,
}

#[repr(C)]
pub struct PJRT_Executable_NumOutputs_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub executable: *mut PJRT_Executable,
    pub num_outputs: usize,
}

#[repr(C)]
pub struct PJRT_ExecuteOptions {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub send_callbacks: *mut *mut PJRT_SendCallbackInfo,
    pub recv_callbacks: *mut *mut PJRT_RecvCallbackInfo,
    pub num_send_ops: usize,
    pub num_recv_ops: usize,
    pub launch_id: c_int,
    pub non_donatable_input_indices: *const i64,
    pub num_non_donatable_input_indices: usize,
    pub context: *mut PJRT_ExecuteContext,
    pub call_location: *const c_char,
    pub num_tasks: usize,
    pub task_ids: *mut c_int,
    pub incarnation_ids: *mut i64,
    // Added after 0.81 (present in 0.113). Zeroed: no multi-slice launch, no HLO output
    // callbacks.
    pub multi_slice_config: *mut c_void,
    pub use_major_to_minor_data_layout_for_callbacks: bool,
    pub hlo_output_callbacks: *mut c_void,
    pub num_hlo_output_callbacks: usize,
}

#[repr(C)]
pub struct PJRT_LoadedExecutable_Execute_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub executable: *mut PJRT_LoadedExecutable,
    pub options: *mut PJRT_ExecuteOptions,
    pub argument_lists: *const *const *mut PJRT_Buffer,
    pub num_devices: usize,
    pub num_args: usize,
    pub output_lists: *const *mut *mut PJRT_Buffer,
    pub device_complete_events: *mut *mut PJRT_Event,
    pub execute_device: *mut PJRT_Device,
}

#[repr(C)]
pub struct PJRT_Executable_Serialize_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub executable: *const PJRT_Executable,
    pub serialized_bytes: *const c_char,
    pub serialized_bytes_size: usize,
    pub serialized_executable: *mut PJRT_SerializedExecutable,
    pub serialized_executable_deleter: Option<unsafe extern "C" fn(*mut PJRT_SerializedExecutable)>,
}

#[repr(C)]
pub struct PJRT_Executable_DeserializeAndLoad_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub client: *mut PJRT_Client,
    pub serialized_executable: *const c_char,
    pub serialized_executable_size: usize,
    pub loaded_executable: *mut PJRT_LoadedExecutable,
    pub overridden_serialized_compile_options: *const c_char,
    pub overridden_serialized_compile_options_size: usize,
    /// `PJRT_LoadOptions*`, added after 0.81; null keeps the defaults.
    pub load_options: *mut c_void,
}

// ---------------------------------- Buffers ----------------------------------

#[repr(C)]
pub struct PJRT_Buffer_Destroy_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub buffer: *mut PJRT_Buffer,
}

#[repr(C)]
pub struct PJRT_Buffer_ElementType_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub buffer: *mut PJRT_Buffer,
    pub type_: PJRT_Buffer_Type,
}

#[repr(C)]
pub struct PJRT_Buffer_Dimensions_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub buffer: *mut PJRT_Buffer,
    pub dims: *const i64,
    pub num_dims: usize,
}

#[repr(C)]
pub struct PJRT_Buffer_OnDeviceSizeInBytes_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub buffer: *mut PJRT_Buffer,
    pub on_device_size_in_bytes: usize,
}

#[repr(C)]
pub struct PJRT_Buffer_Device_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub buffer: *mut PJRT_Buffer,
    pub device: *mut PJRT_Device,
}

#[repr(C)]
pub struct PJRT_Buffer_CopyToDevice_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub buffer: *mut PJRT_Buffer,
    pub dst_device: *mut PJRT_Device,
    pub dst_buffer: *mut PJRT_Buffer,
}

#[repr(C)]
pub struct PJRT_Buffer_ToHostBuffer_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub src: *mut PJRT_Buffer,
    pub host_layout: *mut PJRT_Buffer_MemoryLayout,
    pub dst: *mut c_void,
    pub dst_size: usize,
    pub event: *mut PJRT_Event,
}

#[repr(C)]
pub struct PJRT_Buffer_ReadyEvent_Args {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub buffer: *mut PJRT_Buffer,
    pub event: *mut PJRT_Event,
}

impl_struct_size! {
    PJRT_Api_Version => minor_version,
    PJRT_Error_Destroy_Args => error,
    PJRT_Error_Message_Args => message_size,
    PJRT_Error_GetCode_Args => code,
    PJRT_NamedValue => value_size,
    PJRT_Plugin_Initialize_Args => extension_start,
    PJRT_Plugin_Attributes_Args => num_attributes,
    PJRT_Event_Destroy_Args => event,
    PJRT_Event_Await_Args => event,
    PJRT_Client_Create_Args => kv_try_get_user_arg,
    PJRT_Client_Destroy_Args => client,
    PJRT_Client_PlatformName_Args => platform_name_size,
    PJRT_Client_PlatformVersion_Args => platform_version_size,
    PJRT_Client_AddressableDevices_Args => num_addressable_devices,
    PJRT_Program => format_size,
    PJRT_Client_Compile_Args => executable,
    PJRT_Client_BufferFromHostBuffer_Args => buffer,
    PJRT_DeviceDescription_Id_Args => id,
    PJRT_DeviceDescription_Kind_Args => device_kind_size,
    PJRT_DeviceDescription_DebugString_Args => debug_string_size,
    PJRT_Device_GetDescription_Args => device_description,
    PJRT_Device_LocalHardwareId_Args => local_hardware_id,
    PJRT_Executable_Destroy_Args => executable,
    PJRT_LoadedExecutable_Destroy_Args => executable,
    PJRT_LoadedExecutable_GetExecutable_Args => executable,
    PJRT_Executable_NumOutputs_Args => num_outputs,
    PJRT_ExecuteOptions => num_hlo_output_callbacks,
    PJRT_LoadedExecutable_Execute_Args => execute_device,
    PJRT_Executable_Serialize_Args => serialized_executable_deleter,
    PJRT_Executable_DeserializeAndLoad_Args => load_options,
    PJRT_Buffer_Destroy_Args => buffer,
    PJRT_Buffer_ElementType_Args => type_,
    PJRT_Buffer_Dimensions_Args => num_dims,
    PJRT_Buffer_OnDeviceSizeInBytes_Args => on_device_size_in_bytes,
    PJRT_Buffer_Device_Args => device,
    PJRT_Buffer_CopyToDevice_Args => dst_buffer,
    PJRT_Buffer_ToHostBuffer_Args => event,
    PJRT_Buffer_ReadyEvent_Args => event,
    PJRT_Api => PJRT_TopologyDescription_GetMemorySpaceKindIds,
}

// The plugin's own error for an old layout named this figure ("expected 88").
const _: () = assert!(PJRT_Client_Create_Args::STRUCT_SIZE == 88);
// Trailing padding must not count: the header's macro ends at the last field.
const _: () = assert!(PJRT_Error_GetCode_Args::STRUCT_SIZE == 28);

mod table;
pub use table::*;
pub mod minimum_sizes;
