//! Training checkpoints in the browser's origin-private file system (OPFS): survive a reload,
//! never leave the machine. One file per (emulator, data) pair; OPFS replaces a file only when
//! its writable stream closes, so a crash mid-write leaves the previous checkpoint intact.

use js_sys::{Promise, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    FileSystemDirectoryHandle, FileSystemFileHandle, FileSystemGetFileOptions,
    FileSystemWritableFileStream,
};

const DIR: &str = "scaleot-checkpoints";

/// The checkpoint slot of a run on this emulator and data.
pub fn slot(emulator_sha256: &str, data_sha256: &str) -> String {
    let key = crate::sha256_hex(&[emulator_sha256.as_bytes(), data_sha256.as_bytes()]);
    format!("{}.ckpt.safetensors", &key[..24])
}

async fn await_js<T: JsCast>(p: Promise) -> Result<T, String> {
    let v = JsFuture::from(p).await.map_err(describe)?;
    v.dyn_into::<T>()
        .map_err(|_| "browser storage returned an unexpected object".to_string())
}

pub fn describe(e: JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

async fn dir() -> Result<FileSystemDirectoryHandle, String> {
    let storage = navigator_storage()?;
    let root: FileSystemDirectoryHandle = await_js(storage.get_directory())
        .await
        .map_err(|e| format!("browser storage (OPFS) is unavailable: {e}"))?;
    let dir_opts = web_sys::FileSystemGetDirectoryOptions::new();
    dir_opts.set_create(true);
    await_js(root.get_directory_handle_with_options(DIR, &dir_opts)).await
}

fn navigator_storage() -> Result<web_sys::StorageManager, String> {
    let global = js_sys::global();
    if let Some(w) = global.dyn_ref::<web_sys::Window>() {
        return Ok(w.navigator().storage());
    }
    if let Some(w) = global.dyn_ref::<web_sys::WorkerGlobalScope>() {
        return Ok(w.navigator().storage());
    }
    Err("no browser storage in this context".into())
}

pub async fn save(name: &str, bytes: &[u8]) -> Result<(), String> {
    let opts = FileSystemGetFileOptions::new();
    opts.set_create(true);
    let file: FileSystemFileHandle =
        await_js(dir().await?.get_file_handle_with_options(name, &opts)).await?;
    let stream: FileSystemWritableFileStream = await_js(file.create_writable()).await?;
    let data = Uint8Array::from(bytes);
    JsFuture::from(stream.write_with_buffer_source(&data).map_err(describe)?)
        .await
        .map_err(|e| {
            format!(
                "saving the checkpoint failed (is the disk full?): {}",
                describe(e)
            )
        })?;
    JsFuture::from(stream.close()).await.map_err(describe)?;
    Ok(())
}

/// The stored bytes, or None when there is no such checkpoint.
pub async fn load(name: &str) -> Result<Option<Vec<u8>>, String> {
    let Ok(file) = await_js::<FileSystemFileHandle>(dir().await?.get_file_handle(name)).await
    else {
        return Ok(None);
    };
    let blob: web_sys::File = await_js(file.get_file()).await?;
    let buf = JsFuture::from(blob.array_buffer())
        .await
        .map_err(describe)?;
    Ok(Some(Uint8Array::new(&buf).to_vec()))
}

pub async fn remove(name: &str) -> Result<(), String> {
    // Removing a checkpoint that is not there is fine.
    let _ = JsFuture::from(dir().await?.remove_entry(name)).await;
    Ok(())
}
