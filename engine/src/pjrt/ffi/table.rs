//! The `PJRT_Api` function table, every slot of `pjrt_c_api.h` 0.113 in header order.
//!
//! Kept apart from the argument structs because it is long and only ever grows at its
//! end: a plugin built against an older header has a shorter table, which
//! `Api::has_slot` checks before any call.

#![allow(non_camel_case_types, non_snake_case, dead_code)]

use super::*;

/// A function taking `*mut Args` and returning an owned `PJRT_Error*` (null on success).
pub type ErrFn<A> = Option<unsafe extern "C" fn(*mut A) -> *mut PJRT_Error>;
/// A function taking `*mut Args` and returning nothing (the error accessors).
pub type VoidFn<A> = Option<unsafe extern "C" fn(*mut A)>;
/// A slot this crate never calls; declared only to keep later offsets right.
pub type Unused = Option<unsafe extern "C" fn()>;

/// The function table returned by `GetPjrtApi`, every slot of API 0.113 in header order.
#[repr(C)]
pub struct PJRT_Api {
    pub struct_size: usize,
    pub extension_start: *mut PJRT_Extension_Base,
    pub pjrt_api_version: PJRT_Api_Version,

    pub PJRT_Error_Destroy: VoidFn<PJRT_Error_Destroy_Args>,
    pub PJRT_Error_Message: VoidFn<PJRT_Error_Message_Args>,
    pub PJRT_Error_GetCode: ErrFn<PJRT_Error_GetCode_Args>,

    pub PJRT_Plugin_Initialize: ErrFn<PJRT_Plugin_Initialize_Args>,
    pub PJRT_Plugin_Attributes: ErrFn<PJRT_Plugin_Attributes_Args>,

    pub PJRT_Event_Destroy: ErrFn<PJRT_Event_Destroy_Args>,
    pub PJRT_Event_IsReady: Unused,
    pub PJRT_Event_Error: Unused,
    pub PJRT_Event_Await: ErrFn<PJRT_Event_Await_Args>,
    pub PJRT_Event_OnReady: Unused,

    pub PJRT_Client_Create: ErrFn<PJRT_Client_Create_Args>,
    pub PJRT_Client_Destroy: ErrFn<PJRT_Client_Destroy_Args>,
    pub PJRT_Client_PlatformName: ErrFn<PJRT_Client_PlatformName_Args>,
    pub PJRT_Client_ProcessIndex: Unused,
    pub PJRT_Client_PlatformVersion: ErrFn<PJRT_Client_PlatformVersion_Args>,
    pub PJRT_Client_Devices: Unused,
    pub PJRT_Client_AddressableDevices: ErrFn<PJRT_Client_AddressableDevices_Args>,
    pub PJRT_Client_LookupDevice: Unused,
    pub PJRT_Client_LookupAddressableDevice: Unused,
    pub PJRT_Client_AddressableMemories: Unused,
    pub PJRT_Client_Compile: ErrFn<PJRT_Client_Compile_Args>,
    pub PJRT_Client_DefaultDeviceAssignment: Unused,
    pub PJRT_Client_BufferFromHostBuffer: ErrFn<PJRT_Client_BufferFromHostBuffer_Args>,

    pub PJRT_DeviceDescription_Id: ErrFn<PJRT_DeviceDescription_Id_Args>,
    pub PJRT_DeviceDescription_ProcessIndex: Unused,
    pub PJRT_DeviceDescription_Attributes: Unused,
    pub PJRT_DeviceDescription_Kind: ErrFn<PJRT_DeviceDescription_Kind_Args>,
    pub PJRT_DeviceDescription_DebugString: ErrFn<PJRT_DeviceDescription_DebugString_Args>,
    pub PJRT_DeviceDescription_ToString: Unused,

    pub PJRT_Device_GetDescription: ErrFn<PJRT_Device_GetDescription_Args>,
    pub PJRT_Device_IsAddressable: Unused,
    pub PJRT_Device_LocalHardwareId: ErrFn<PJRT_Device_LocalHardwareId_Args>,
    pub PJRT_Device_AddressableMemories: Unused,
    pub PJRT_Device_DefaultMemory: Unused,
    pub PJRT_Device_MemoryStats: Unused,

    pub PJRT_Memory_Id: Unused,
    pub PJRT_Memory_Kind: Unused,
    pub PJRT_Memory_DebugString: Unused,
    pub PJRT_Memory_ToString: Unused,
    pub PJRT_Memory_AddressableByDevices: Unused,

    pub PJRT_Executable_Destroy: ErrFn<PJRT_Executable_Destroy_Args>,
    pub PJRT_Executable_Name: Unused,
    pub PJRT_Executable_NumReplicas: Unused,
    pub PJRT_Executable_NumPartitions: Unused,
    pub PJRT_Executable_NumOutputs: ErrFn<PJRT_Executable_NumOutputs_Args>,
    pub PJRT_Executable_SizeOfGeneratedCodeInBytes: Unused,
    pub PJRT_Executable_GetCostAnalysis: Unused,
    pub PJRT_Executable_OutputMemoryKinds: Unused,
    pub PJRT_Executable_OptimizedProgram: Unused,
    pub PJRT_Executable_Serialize: ErrFn<PJRT_Executable_Serialize_Args>,

    pub PJRT_LoadedExecutable_Destroy: ErrFn<PJRT_LoadedExecutable_Destroy_Args>,
    pub PJRT_LoadedExecutable_GetExecutable: ErrFn<PJRT_LoadedExecutable_GetExecutable_Args>,
    pub PJRT_LoadedExecutable_AddressableDevices: Unused,
    pub PJRT_LoadedExecutable_Delete: Unused,
    pub PJRT_LoadedExecutable_IsDeleted: Unused,
    pub PJRT_LoadedExecutable_Execute: ErrFn<PJRT_LoadedExecutable_Execute_Args>,
    pub PJRT_Executable_DeserializeAndLoad: ErrFn<PJRT_Executable_DeserializeAndLoad_Args>,
    pub PJRT_LoadedExecutable_Fingerprint: Unused,

    pub PJRT_Buffer_Destroy: ErrFn<PJRT_Buffer_Destroy_Args>,
    pub PJRT_Buffer_ElementType: ErrFn<PJRT_Buffer_ElementType_Args>,
    pub PJRT_Buffer_Dimensions: ErrFn<PJRT_Buffer_Dimensions_Args>,
    pub PJRT_Buffer_UnpaddedDimensions: Unused,
    pub PJRT_Buffer_DynamicDimensionIndices: Unused,
    pub PJRT_Buffer_GetMemoryLayout: Unused,
    pub PJRT_Buffer_OnDeviceSizeInBytes: ErrFn<PJRT_Buffer_OnDeviceSizeInBytes_Args>,
    pub PJRT_Buffer_Device: ErrFn<PJRT_Buffer_Device_Args>,
    pub PJRT_Buffer_Memory: Unused,
    pub PJRT_Buffer_Delete: Unused,
    pub PJRT_Buffer_IsDeleted: Unused,
    pub PJRT_Buffer_CopyToDevice: ErrFn<PJRT_Buffer_CopyToDevice_Args>,
    pub PJRT_Buffer_ToHostBuffer: ErrFn<PJRT_Buffer_ToHostBuffer_Args>,
    pub PJRT_Buffer_IsOnCpu: Unused,
    pub PJRT_Buffer_ReadyEvent: ErrFn<PJRT_Buffer_ReadyEvent_Args>,
    pub PJRT_Buffer_UnsafePointer: Unused,
    pub PJRT_Buffer_IncreaseExternalReferenceCount: Unused,
    pub PJRT_Buffer_DecreaseExternalReferenceCount: Unused,
    pub PJRT_Buffer_OpaqueDeviceMemoryDataPointer: Unused,

    pub PJRT_CopyToDeviceStream_Destroy: Unused,
    pub PJRT_CopyToDeviceStream_AddChunk: Unused,
    pub PJRT_CopyToDeviceStream_TotalBytes: Unused,
    pub PJRT_CopyToDeviceStream_GranuleSize: Unused,
    pub PJRT_CopyToDeviceStream_CurrentBytes: Unused,

    pub PJRT_TopologyDescription_Create: Unused,
    pub PJRT_TopologyDescription_Destroy: Unused,
    pub PJRT_TopologyDescription_PlatformName: Unused,
    pub PJRT_TopologyDescription_PlatformVersion: Unused,
    pub PJRT_TopologyDescription_GetDeviceDescriptions: Unused,
    pub PJRT_TopologyDescription_Serialize: Unused,
    pub PJRT_TopologyDescription_Attributes: Unused,

    pub PJRT_Compile: Unused,

    // Slots appended after the 0.x reordering; a plugin older than 0.81 may end before
    // any of them, so callers check `struct_size` before using one.
    pub PJRT_Executable_OutputElementTypes: Unused,
    pub PJRT_Executable_OutputDimensions: Unused,
    pub PJRT_Buffer_CopyToMemory: Unused,
    pub PJRT_Client_CreateViewOfDeviceBuffer: Unused,
    pub PJRT_Executable_Fingerprint: Unused,
    pub PJRT_Client_TopologyDescription: Unused,
    pub PJRT_Executable_GetCompiledMemoryStats: Unused,
    pub PJRT_Memory_Kind_Id: Unused,
    pub PJRT_ExecuteContext_Create: Unused,
    pub PJRT_ExecuteContext_Destroy: Unused,
    pub PJRT_Buffer_CopyRawToHost: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_Destroy: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_TransferData: Unused,
    pub PJRT_Client_CreateBuffersForAsyncHostToDevice: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_RetrieveBuffer: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_Device: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_BufferCount: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_BufferSize: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_SetBufferError: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_AddMetadata: Unused,
    pub PJRT_Client_DmaMap: Unused,
    pub PJRT_Client_DmaUnmap: Unused,
    pub PJRT_Client_CreateUninitializedBuffer: Unused,
    pub PJRT_Client_UpdateGlobalProcessInfo: Unused,
    pub PJRT_TopologyDescription_Deserialize: Unused,
    pub PJRT_Client_CreateAliasBuffer: Unused,
    pub PJRT_Client_FulfillAliasBuffer: Unused,
    pub PJRT_LoadedExecutable_GetDeviceAssignment: Unused,
    // Slots 119-138: added between 0.81 and 0.113 (the CUDA plugin's 0.115 table has
    // exactly 138 slots too).
    pub PJRT_Client_CreateErrorBuffer: Unused,
    pub PJRT_AsyncHostToDeviceTransferManager_TransferLiteral: Unused,
    pub PJRT_Buffer_CopyRawToHostFuture: Unused,
    pub PJRT_Device_PoisonExecution: Unused,
    pub PJRT_Device_CreateAsyncTrackingEvent: Unused,
    pub PJRT_AsyncTrackingEvent_Destroy: Unused,
    pub PJRT_Executable_GetCompileOptions: Unused,
    pub PJRT_Buffer_DonateWithControlDependency: Unused,
    pub PJRT_Event_Create: Unused,
    pub PJRT_Event_Set: Unused,
    pub PJRT_Device_GetAttributes: Unused,
    pub PJRT_Client_Load: Unused,
    pub PJRT_LoadedExecutable_AddressableDeviceLogicalIds: Unused,
    pub PJRT_Buffer_Bitcast: Unused,
    pub PJRT_Error_ForEachPayload: Unused,
    pub PJRT_TopologyDescription_Fingerprint: Unused,
    pub PJRT_Executable_ParameterMemoryKinds: Unused,
    pub PJRT_Device_ClearMemoryStats: Unused,
    pub PJRT_TopologyDescription_MakeCanonicalShapeForMemorySpace: Unused,
    pub PJRT_TopologyDescription_GetMemorySpaceKindIds: Unused,
}

/// The plugin's exported entry point.
pub type GetPjrtApiFn = unsafe extern "C" fn() -> *const PJRT_Api;

/// Number of function-pointer slots in the table above.
pub const PJRT_API_SLOTS: usize = (size_of::<PJRT_Api>()
    - core::mem::offset_of!(PJRT_Api, PJRT_Error_Destroy))
    / size_of::<Unused>();

// `pjrt_c_api.h` 0.113 declares 138 `_PJRT_API_STRUCT_FIELD` slots (0.81: 118); a missed
// or extra slot would shift every later function pointer.
const _: () = assert!(PJRT_API_SLOTS == 138);
const _: () = assert!(PJRT_Api::STRUCT_SIZE == 40 + 138 * 8);
