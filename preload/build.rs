//! The shared library's SONAME: `libctxalloc.so.<major>` (what `install.sh` installs it as, and
//! what a program linked against it records), whatever cargo names the file it builds.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libctxalloc.so.{major}");
    }
}
