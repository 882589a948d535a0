//! The smallest argument structs the `jax-cuda13-pjrt` 0.11.2 plugin (PJRT C API 0.115)
//! accepts, for every struct this crate passes it.
//!
//! Why: a plugin refuses a struct whose `struct_size` is below its own minimum
//! ("Unexpected PJRT_Client_Create_Args size: expected 88, got 72"), and most of these
//! entry points can only be reached with a GPU. The figures were read from the plugin's
//! machine code: every entry point calls
//! `pjrt::ActualStructSizeIsGreaterOrEqual(name, expected, actual)` with `expected` as an
//! immediate (`scripts/pjrt-struct-minimums.py` redoes the extraction for any plugin).
//! The tests assert our `STRUCT_SIZE`s are at least these, so a layout mistake that
//! would only surface on a GPU machine fails here.

/// `(struct name, minimum struct_size)` as demanded by the 0.115 CUDA plugin.
pub const CUDA13_0_115: &[(&str, usize)] = &[
    ("PJRT_Buffer_CopyToDevice_Args", 40),
    ("PJRT_Buffer_Destroy_Args", 24),
    ("PJRT_Buffer_Device_Args", 32),
    ("PJRT_Buffer_Dimensions_Args", 40),
    ("PJRT_Buffer_ElementType_Args", 28),
    ("PJRT_Buffer_OnDeviceSizeInBytes_Args", 32),
    ("PJRT_Buffer_ReadyEvent_Args", 32),
    ("PJRT_Buffer_ToHostBuffer_Args", 56),
    ("PJRT_Client_AddressableDevices_Args", 40),
    ("PJRT_Client_BufferFromHostBuffer_Args", 120),
    ("PJRT_Client_Compile_Args", 56),
    ("PJRT_Client_Create_Args", 88),
    ("PJRT_Client_Destroy_Args", 24),
    ("PJRT_Client_PlatformName_Args", 40),
    ("PJRT_DeviceDescription_DebugString_Args", 40),
    ("PJRT_DeviceDescription_Id_Args", 28),
    ("PJRT_DeviceDescription_Kind_Args", 40),
    ("PJRT_Device_GetDescription_Args", 32),
    ("PJRT_Device_LocalHardwareId_Args", 28),
    ("PJRT_Error_Destroy_Args", 24),
    ("PJRT_Error_GetCode_Args", 28),
    ("PJRT_Error_Message_Args", 40),
    ("PJRT_Event_Await_Args", 24),
    ("PJRT_Event_Destroy_Args", 24),
    ("PJRT_Executable_DeserializeAndLoad_Args", 64),
    ("PJRT_Executable_Destroy_Args", 24),
    ("PJRT_Executable_NumOutputs_Args", 32),
    ("PJRT_Executable_Serialize_Args", 56),
    ("PJRT_ExecuteOptions", 112),
    ("PJRT_LoadedExecutable_Destroy_Args", 24),
    ("PJRT_LoadedExecutable_Execute_Args", 80),
    ("PJRT_LoadedExecutable_GetExecutable_Args", 32),
    ("PJRT_Plugin_Attributes_Args", 32),
    ("PJRT_Plugin_Initialize_Args", 16),
    ("PJRT_Program", 48),
];

/// `(struct name, our STRUCT_SIZE)` for every argument struct this crate passes.
pub fn declared() -> Vec<(&'static str, usize)> {
    use super::*;
    macro_rules! sizes {
        ($($s:ident),* $(,)?) => { vec![$((stringify!($s), $s::STRUCT_SIZE)),*] };
    }
    sizes![
        PJRT_Buffer_CopyToDevice_Args,
        PJRT_Buffer_Destroy_Args,
        PJRT_Buffer_Device_Args,
        PJRT_Buffer_Dimensions_Args,
        PJRT_Buffer_ElementType_Args,
        PJRT_Buffer_OnDeviceSizeInBytes_Args,
        PJRT_Buffer_ReadyEvent_Args,
        PJRT_Buffer_ToHostBuffer_Args,
        PJRT_Client_AddressableDevices_Args,
        PJRT_Client_BufferFromHostBuffer_Args,
        PJRT_Client_Compile_Args,
        PJRT_Client_Create_Args,
        PJRT_Client_Destroy_Args,
        PJRT_Client_PlatformName_Args,
        PJRT_DeviceDescription_DebugString_Args,
        PJRT_DeviceDescription_Id_Args,
        PJRT_DeviceDescription_Kind_Args,
        PJRT_Device_GetDescription_Args,
        PJRT_Device_LocalHardwareId_Args,
        PJRT_Error_Destroy_Args,
        PJRT_Error_GetCode_Args,
        PJRT_Error_Message_Args,
        PJRT_Event_Await_Args,
        PJRT_Event_Destroy_Args,
        PJRT_Executable_DeserializeAndLoad_Args,
        PJRT_Executable_Destroy_Args,
        PJRT_Executable_NumOutputs_Args,
        PJRT_Executable_Serialize_Args,
        PJRT_ExecuteOptions,
        PJRT_LoadedExecutable_Destroy_Args,
        PJRT_LoadedExecutable_Execute_Args,
        PJRT_LoadedExecutable_GetExecutable_Args,
        PJRT_Plugin_Attributes_Args,
        PJRT_Plugin_Initialize_Args,
        PJRT_Program,
    ]
}
