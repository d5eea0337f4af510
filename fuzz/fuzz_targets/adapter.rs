#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    scaleot_fuzz::adapter(bytes);
});
