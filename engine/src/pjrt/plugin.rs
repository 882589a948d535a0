//! Loading a PJRT plugin (a shared library exporting `GetPjrtApi`) and calling through
//! its function table.

use std::ffi::{OsString, c_char};
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex};

use super::error::{Error, Result, code};
use super::ffi;

/// The `pjrt_c_api.h` version our declarations follow (see `ffi`).
pub const HEADER_API_VERSION: (i32, i32) = (0, 113);

/// Oldest API minor version this layer accepts. Our argument structs are laid out as in
/// 0.113; plugins accept larger structs than their own, but plugins older than 0.60
/// lack fields we rely on (`execute_device`, `DeserializeAndLoad` options), so we refuse
/// them up front. Newer 0.x plugins are accepted: within major 0 the header only
/// appends fields and slots, and every slot is checked before use (`has_slot`).
pub const MIN_MINOR_VERSION: i32 = 60;

/// A plugin whose PJRT C API version cannot work with these declarations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the plugin implements PJRT C API {}.{}, this build is written against {}.{} and works \
     with plugins {}.{} to {}.x ({})",
    plugin.0, plugin.1, HEADER_API_VERSION.0, HEADER_API_VERSION.1,
    HEADER_API_VERSION.0, MIN_MINOR_VERSION, HEADER_API_VERSION.0,
    if plugin.0 != HEADER_API_VERSION.0 {
        "a different major version changes the ABI"
    } else {
        "too old: it lacks fields and functions this build calls"
    }
)]
pub struct VersionMismatch {
    /// `(major, minor)` the plugin reports.
    pub plugin: (i32, i32),
}

/// Whether a plugin reporting PJRT C API `plugin` can work with these declarations.
pub fn check_api_version(plugin: (i32, i32)) -> std::result::Result<(), VersionMismatch> {
    if plugin.0 == HEADER_API_VERSION.0 && plugin.1 >= MIN_MINOR_VERSION {
        Ok(())
    } else {
        Err(VersionMismatch { plugin })
    }
}

/// The plugin's function table. `'static` because plugins are never unloaded (see
/// [`Plugin::load`]).
#[derive(Clone, Copy)]
pub(crate) struct Api(&'static ffi::PJRT_Api);

// SAFETY: the table is immutable after `GetPjrtApi` returns and holds only function
// pointers; PJRT functions may be called from any thread.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

impl Api {
    pub(crate) fn table(&self) -> &'static ffi::PJRT_Api {
        self.0
    }

    /// Whether the plugin's table reaches the slot at `offset` (a plugin built against
    /// an older header has a shorter table).
    pub(crate) fn has_slot(&self, offset: usize) -> bool {
        self.0.struct_size >= offset + size_of::<ffi::Unused>()
    }

    /// Turns a returned `PJRT_Error*` into a `Result`, destroying the error.
    pub(crate) fn check(&self, err: *mut ffi::PJRT_Error) -> Result<()> {
        if err.is_null() {
            Ok(())
        } else {
            // SAFETY: a non-null error just returned by this API is live and ours.
            Err(unsafe { Error::from_raw(self, err) })
        }
    }

    /// # Safety
    /// `err` must be a live error of this API, destroyed only here.
    pub(crate) unsafe fn destroy_error(&self, err: *mut ffi::PJRT_Error) {
        if let Some(f) = self.0.PJRT_Error_Destroy {
            let mut a = ffi::PJRT_Error_Destroy_Args {
                struct_size: ffi::PJRT_Error_Destroy_Args::STRUCT_SIZE,
                extension_start: ptr::null_mut(),
                error: err,
            };
            // SAFETY: per this function's contract.
            unsafe { f(&mut a) };
        }
    }
}

/// Calls `PJRT_Api.<slot>` with `args` (a `&mut` to the argument struct) and converts the
/// returned error. Fails cleanly if the plugin's table is too short or the slot is null.
macro_rules! pjrt_call {
    ($api:expr, $slot:ident, $args:expr) => {{
        let api: $crate::pjrt::plugin::Api = $api;
        let offset = ::core::mem::offset_of!($crate::pjrt::ffi::PJRT_Api, $slot);
        match api.table().$slot {
            Some(f) if api.has_slot(offset) => {
                // SAFETY: the argument struct is laid out as the header declares, with
                // `struct_size` set; every pointer in it is valid for the call.
                let err = unsafe { f($args) };
                api.check(err)
            }
            _ => Err($crate::pjrt::error::Error::local(
                $crate::pjrt::error::code::UNIMPLEMENTED,
                concat!("the PJRT plugin does not provide ", stringify!($slot)),
            )),
        }
    }};
}
pub(crate) use pjrt_call;

/// An owned `PJRT_Event`, destroyed on drop.
pub(crate) struct Event {
    api: Api,
    raw: *mut ffi::PJRT_Event,
}

impl Event {
    /// Takes ownership of `raw` (null allowed: the operation finished synchronously).
    pub(crate) fn new(api: Api, raw: *mut ffi::PJRT_Event) -> Event {
        Event { api, raw }
    }

    /// Blocks until the event is ready and returns its status.
    pub(crate) fn wait(self) -> Result<()> {
        if self.raw.is_null() {
            return Ok(());
        }
        let mut a = ffi::PJRT_Event_Await_Args {
            struct_size: ffi::PJRT_Event_Await_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            event: self.raw,
        };
        pjrt_call!(self.api, PJRT_Event_Await, &mut a)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.raw.is_null() {
            return;
        }
        let mut a = ffi::PJRT_Event_Destroy_Args {
            struct_size: ffi::PJRT_Event_Destroy_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            event: self.raw,
        };
        if let Err(e) = pjrt_call!(self.api, PJRT_Event_Destroy, &mut a) {
            tracing::warn!(error = %e, "PJRT_Event_Destroy failed");
        }
    }
}

/// Copies a (pointer, length) string owned by the plugin.
///
/// # Safety
/// `p` must be null or point to `len` readable bytes.
pub(crate) unsafe fn copy_str(p: *const c_char, len: usize) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: per this function's contract.
    let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loaded PJRT plugin. Cheap to clone; loading the same file twice returns the same
/// plugin (the library is initialized once per process).
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    api: Api,
    path: PathBuf,
    // Never closed: XLA plugins start thread pools and register process-exit hooks, and
    // are not written to survive `dlclose`. The handle stays open for the process.
    _lib: ManuallyDrop<libloading::Library>,
}

static LOADED: Mutex<Vec<Plugin>> = Mutex::new(Vec::new());

/// A plugin attribute value (`PJRT_NamedValue`).
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    String(String),
    Int64(i64),
    Int64List(Vec<i64>),
    Float(f32),
    Bool(bool),
}

impl Plugin {
    /// Loads the plugin at `path`, checks its API version and initializes it. A bare file
    /// name that does not exist in the working directory (`libtpu.so`) is left to the
    /// dynamic loader's search path.
    pub fn load(path: &Path) -> Result<Plugin> {
        let bare_name = path.components().count() == 1 && !path.exists();
        let canonical = if bare_name {
            path.to_path_buf()
        } else {
            path.canonicalize().map_err(|e| {
                Error::local(
                    code::NOT_FOUND,
                    format!("PJRT plugin {}: {e}", path.display()),
                )
            })?
        };
        let mut loaded = LOADED
            .lock()
            .map_err(|_| Error::local(code::INTERNAL, "PJRT plugin registry poisoned"))?;
        if let Some(p) = loaded.iter().find(|p| p.inner.path == canonical) {
            return Ok(p.clone());
        }
        let plugin = Self::open(&canonical)?;
        loaded.push(plugin.clone());
        Ok(plugin)
    }

    fn open(path: &Path) -> Result<Plugin> {
        let fail = |what: String| Error::local(code::FAILED_PRECONDITION, what);
        super::discover::preload_for(path).map_err(|e| fail(e.to_string()))?;
        // SAFETY: loading a shared library runs its initializers; a PJRT plugin is meant
        // to be dlopen-ed this way.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| fail(format!("cannot load PJRT plugin {}: {e}", path.display())))?;
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin.
        let get_api: libloading::Symbol<ffi::GetPjrtApiFn> = unsafe { lib.get(b"GetPjrtApi\0") }
            .map_err(|e| fail(format!("{} exports no GetPjrtApi: {e}", path.display())))?;
        // SAFETY: returns a pointer to a static table inside the library, which we
        // never unload.
        let raw = unsafe { get_api() };
        if raw.is_null() {
            return Err(fail(format!(
                "{}: GetPjrtApi returned null",
                path.display()
            )));
        }
        // SAFETY: non-null, static, and the library stays loaded for the process.
        let table: &'static ffi::PJRT_Api = unsafe { &*raw };
        let (major, minor) = (
            table.pjrt_api_version.major_version,
            table.pjrt_api_version.minor_version,
        );
        check_api_version((major, minor)).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        if (major, minor) > HEADER_API_VERSION {
            tracing::info!(plugin = %path.display(), version = %format!("{major}.{minor}"),
                header = %format!("{}.{}", HEADER_API_VERSION.0, HEADER_API_VERSION.1),
                "the PJRT plugin is newer than our header; only functions both know are used");
        }
        let api = Api(table);
        let init_offset = std::mem::offset_of!(ffi::PJRT_Api, PJRT_Plugin_Initialize);
        if table.PJRT_Plugin_Initialize.is_some() && api.has_slot(init_offset) {
            let mut a = ffi::PJRT_Plugin_Initialize_Args {
                struct_size: ffi::PJRT_Plugin_Initialize_Args::STRUCT_SIZE,
                extension_start: ptr::null_mut(),
            };
            pjrt_call!(api, PJRT_Plugin_Initialize, &mut a)?;
        }
        tracing::info!(plugin = %path.display(), api_version = %format!("{major}.{minor}"),
            table_slots = (table.struct_size.saturating_sub(40)) / size_of::<ffi::Unused>(),
            "PJRT plugin loaded");
        Ok(Plugin {
            inner: Arc::new(PluginInner {
                api,
                path: path.to_path_buf(),
                _lib: ManuallyDrop::new(lib),
            }),
        })
    }

    /// `(major, minor)` of the PJRT C API the plugin was built with.
    pub fn api_version(&self) -> (i32, i32) {
        let v = &self.inner.api.table().pjrt_api_version;
        (v.major_version, v.minor_version)
    }

    /// `PJRT_Api.struct_size` as reported by the plugin.
    pub fn api_struct_size(&self) -> usize {
        self.inner.api.table().struct_size
    }

    /// The canonical path the plugin was loaded from (or the bare name given to the
    /// dynamic loader).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The plugin's attributes (e.g. `xla_version`, `stablehlo_current_version`).
    pub fn attributes(&self) -> Result<Vec<(String, AttributeValue)>> {
        let mut a = ffi::PJRT_Plugin_Attributes_Args {
            struct_size: ffi::PJRT_Plugin_Attributes_Args::STRUCT_SIZE,
            extension_start: ptr::null_mut(),
            attributes: ptr::null(),
            num_attributes: 0,
        };
        pjrt_call!(self.inner.api, PJRT_Plugin_Attributes, &mut a)?;
        let mut out = Vec::with_capacity(a.num_attributes);
        for i in 0..a.num_attributes {
            // SAFETY: the plugin returned `num_attributes` values living for the process.
            let nv = unsafe { &*a.attributes.add(i) };
            // SAFETY: name/value pointers come from the plugin with their lengths; the
            // union member read is the one `type_` names.
            let (name, value) = unsafe {
                let name = copy_str(nv.name, nv.name_size);
                let value = match nv.type_ {
                    ffi::PJRT_NamedValue_kString => {
                        AttributeValue::String(copy_str(nv.value.string_value, nv.value_size))
                    }
                    ffi::PJRT_NamedValue_kInt64 => AttributeValue::Int64(nv.value.int64_value),
                    ffi::PJRT_NamedValue_kInt64List => {
                        let p = nv.value.int64_array_value;
                        let list = if p.is_null() {
                            Vec::new()
                        } else {
                            std::slice::from_raw_parts(p, nv.value_size).to_vec()
                        };
                        AttributeValue::Int64List(list)
                    }
                    ffi::PJRT_NamedValue_kFloat => AttributeValue::Float(nv.value.float_value),
                    ffi::PJRT_NamedValue_kBool => AttributeValue::Bool(nv.value.bool_value),
                    other => AttributeValue::String(format!("<unknown value type {other}>")),
                };
                (name, value)
            };
            out.push((name, value));
        }
        Ok(out)
    }

    pub(crate) fn api(&self) -> Api {
        self.inner.api
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.api_version();
        f.debug_struct("Plugin")
            .field("path", &self.inner.path)
            .field("api_version", &format_args!("{major}.{minor}"))
            .finish()
    }
}

/// Where the CPU plugin lives: `$SCORER_PJRT_PLUGIN` if set, else
/// `$SCORER_HOME/plugins/xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so` with `SCORER_HOME`
/// defaulting to `$HOME/.cache/scorer`.
///
/// A plugin name in `SCORER_PJRT_PLUGIN` (`cuda13`, `tpu`, ...) is resolved by
/// [`super::discover::resolve_plugin`]; if that finds nothing the name is kept, so loading it
/// fails with the loader's message.
pub fn default_plugin_path() -> PathBuf {
    if let Some(spec) = std::env::var_os("SCORER_PJRT_PLUGIN").and_then(|v| v.into_string().ok())
        && super::discover::PluginName::parse(&spec).is_some()
        && !Path::new(&spec).exists()
    {
        match super::discover::resolve_plugin(&spec) {
            Ok(path) => return path,
            Err(e) => tracing::warn!(error = %e, "SCORER_PJRT_PLUGIN"),
        }
    }
    plugin_path_from(
        std::env::var_os("SCORER_PJRT_PLUGIN"),
        std::env::var_os("SCORER_HOME"),
        std::env::var_os("HOME"),
    )
}

fn plugin_path_from(
    plugin: Option<OsString>,
    scorer_home: Option<OsString>,
    home: Option<OsString>,
) -> PathBuf {
    if let Some(p) = plugin.filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let scorer_home = scorer_home
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = home.map_or_else(|| PathBuf::from("."), PathBuf::from);
            home.join(".cache").join("scorer")
        });
    plugin_path_in(&scorer_home)
}

/// Where `scorer fetch --plugin` puts the CPU plugin under `scorer_home`.
pub(crate) fn plugin_path_in(scorer_home: &Path) -> PathBuf {
    scorer_home
        .join("plugins")
        .join("xla-cpu-pjrt-0.0.1")
        .join("xla_cpu_pjrt.so")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn plugin_path_prefers_the_explicit_variable() {
        assert_eq!(
            plugin_path_from(os("/opt/libtpu.so"), os("/srv/s"), os("/home/u")),
            PathBuf::from("/opt/libtpu.so")
        );
    }

    #[test]
    fn plugin_path_falls_back_to_scorer_home_then_home() {
        let tail = "plugins/xla-cpu-pjrt-0.0.1/xla_cpu_pjrt.so";
        assert_eq!(
            plugin_path_from(os(""), os("/srv/s"), os("/home/u")),
            PathBuf::from("/srv/s").join(tail)
        );
        assert_eq!(
            plugin_path_from(None, None, os("/home/u")),
            PathBuf::from("/home/u/.cache/scorer").join(tail)
        );
    }
}
