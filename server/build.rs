//! Rebuilds the server when a dashboard file is added, removed or changed: `include_dir!`
//! embeds `web/`, and cargo does not otherwise watch a directory a macro reads.

fn main() {
    println!("cargo:rerun-if-changed=web");
}
