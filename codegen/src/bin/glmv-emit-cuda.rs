//! Writes the CUDA sources glmv-codegen emits (what runtime/build.rs hands to nvcc) into a directory, one `<group>.cu`
//! each, for tools that compile the kernels themselves (scripts/cuda-emulator/build.sh).
use std::{env, fs, path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let Some(dir) = env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: glmv-emit-cuda DIR");
        return ExitCode::from(2);
    };
    let written = fs::create_dir_all(&dir).and_then(|()| {
        glmv_codegen::emit_cuda()
            .into_iter()
            .try_for_each(|source| fs::write(dir.join(format!("{}.cu", source.group)), source.text))
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("glmv-emit-cuda: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
