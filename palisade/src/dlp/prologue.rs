//! Where in a function to put an entry probe so that a hit costs one trap, not two.
//!
//! A uprobe replaces an instruction with `int3`; on the hit the kernel runs the programs and
//! then has to execute the displaced instruction. Branches (`call`, `jmp`, `jcc`) it emulates;
//! anything else it single-steps out of line, which is a second trap (`#DB`). Under KVM a
//! `#DB` always exits to the hypervisor: on this machine a probe on `SSL_write_ex`'s first
//! instruction (`sub $8,%rsp`) adds about 10 us per call, one on the `call` four bytes later
//! about 1 us (`docs/design/dlp.md`, Cost).
//!
//! [`emulated_offset`] walks the straight-line start of a function over instructions known
//! not to touch the argument registers (`rdi`, `rsi`, `rdx`, `rcx`) nor to branch, and stops
//! at the first branch the kernel emulates: a probe there sees the same arguments as one at
//! the entry, and every call passes it. Anything it does not know ends the walk at offset 0
//! (the entry: correct, only slower).

use std::path::Path;

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

/// Instructions walked at most before giving up (offset 0).
pub const MAX_PROLOGUE_INSNS: usize = 8;
/// Bytes of a function read for the walk.
pub const PROLOGUE_BYTES: usize = 48;

/// The offset from the function's start of the first instruction the kernel emulates, if it
/// comes after straight-line instructions that leave the argument registers alone; 0
/// otherwise (also when `code` is empty or the first instruction is the branch).
#[must_use]
pub fn emulated_offset(code: &[u8]) -> u64 {
    let mut at = 0usize;
    for _ in 0..MAX_PROLOGUE_INSNS {
        let rest = &code[at.min(code.len())..];
        if is_emulated(rest) {
            return at as u64;
        }
        match harmless_len(rest) {
            Some(n) => at += n,
            None => return 0,
        }
    }
    0
}

/// A branch x86 uprobes emulate (`call rel32`, `jmp rel32/rel8`, `jcc rel8/rel32`), with its
/// whole encoding present.
fn is_emulated(c: &[u8]) -> bool {
    matches!(
        c,
        [0xe8 | 0xe9, _, _, _, _, ..]
            | [0xeb | 0x70..=0x7f, _, ..]
            | [0x0f, 0x80..=0x8f, _, _, _, _, ..]
    )
}

/// The length of an instruction that neither branches nor writes `rdi`, `rsi`, `rdx` or
/// `rcx` (nor reads memory it could fault on): the usual prologue of a compiled function.
fn harmless_len(c: &[u8]) -> Option<usize> {
    match c {
        // endbr64
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => Some(4),
        // sub $imm8,%rsp / sub $imm32,%rsp
        [0x48, 0x83, 0xec, _, ..] => Some(4),
        [0x48, 0x81, 0xec, _, _, _, _, ..] => Some(7),
        // mov %fs:0x28,%rax (the stack protector's canary)
        [0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, ..] => Some(9),
        // mov %rax,disp8(%rsp) / mov %rax,disp32(%rsp)
        [0x48, 0x89, 0x44, 0x24, _, ..] => Some(5),
        [0x48, 0x89, 0x84, 0x24, _, _, _, _, ..] => Some(8),
        // xor %eax,%eax
        [0x31 | 0x33, 0xc0, ..] => Some(2),
        // test reg,reg (flags only), with or without a REX prefix
        [0x85, m, ..] if m >> 6 == 3 => Some(2),
        [0x48 | 0x49 | 0x4c | 0x4d, 0x85, m, ..] if m >> 6 == 3 => Some(3),
        _ => None,
    }
}

/// The first [`PROLOGUE_BYTES`] bytes of the exported function `symbol` in the ELF file
/// `path`.
///
/// # Errors
/// When the file cannot be read or parsed, or does not export the symbol.
pub fn function_bytes(path: &Path, symbol: &str) -> Result<Vec<u8>> {
    let (data, off, len) = locate(path, symbol)?;
    let to = off + len.min(PROLOGUE_BYTES);
    Ok(data.get(off..to).unwrap_or_default().to_vec())
}

/// The offset in the file `path` of the exported function `symbol` (what a tracefs uprobe
/// event names).
///
/// # Errors
/// As [`function_bytes`].
pub fn function_offset(path: &Path, symbol: &str) -> Result<u64> {
    Ok(locate(path, symbol)?.1 as u64)
}

/// The file's bytes, the function's offset in them and the bytes of its segment after it.
fn locate(path: &Path, symbol: &str) -> Result<(Vec<u8>, usize, usize)> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (off, len) = {
        let file =
            object::File::parse(&*data).with_context(|| format!("parsing {}", path.display()))?;
        let sym = file
            .dynamic_symbols()
            .chain(file.symbols())
            .find(|s| s.name() == Ok(symbol) && s.is_definition())
            .with_context(|| format!("{} exports no {symbol}", path.display()))?;
        let addr = sym.address();
        let seg = file
            .segments()
            .find(|seg| addr >= seg.address() && addr - seg.address() < seg.size())
            .with_context(|| format!("{symbol} in {} lies in no segment", path.display()))?;
        let (foff, fsize) = seg.file_range();
        let rel = addr - seg.address();
        anyhow::ensure!(
            rel < fsize,
            "{symbol} in {} is not in the file",
            path.display()
        );
        ((foff + rel) as usize, (fsize - rel) as usize)
    };
    anyhow::ensure!(off + len <= data.len(), "{} is cut short", path.display());
    Ok((data, off, len))
}

/// Where to probe `symbol` in `path` at its entry: [`emulated_offset`] of its code, 0 when it
/// cannot be read.
#[must_use]
pub fn entry_offset(path: &Path, symbol: &str) -> u64 {
    function_bytes(path, symbol).map_or(0, |c| emulated_offset(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_3_prologues() {
        // SSL_write_ex: sub $8,%rsp; call ...
        let ex = [
            0x48, 0x83, 0xec, 0x08, 0xe8, 0x87, 0xfb, 0xff, 0xff, 0x31, 0xd2,
        ];
        assert_eq!(emulated_offset(&ex), 4);
        // SSL_write: sub $0x18,%rsp; mov %fs:0x28,%rax; mov %rax,8(%rsp); xor %eax,%eax;
        // test %edx,%edx; js ...
        let w = [
            0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0, 0, 0, 0x48, 0x89, 0x44,
            0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f,
        ];
        assert_eq!(emulated_offset(&w), 0x16);
        // SSL_free: test %rdi,%rdi; je ...
        let f = [0x48, 0x85, 0xff, 0x0f, 0x84, 0x97, 0x03, 0, 0];
        assert_eq!(emulated_offset(&f), 3);
        // endbr64; jmp rel8
        assert_eq!(emulated_offset(&[0xf3, 0x0f, 0x1e, 0xfa, 0xeb, 0x10]), 4);
    }

    #[test]
    fn unknown_or_argument_writing_instructions_stay_at_the_entry() {
        // mov %rdi,%rbx; call: unknown, so the entry.
        assert_eq!(emulated_offset(&[0x48, 0x89, 0xfb, 0xe8, 0, 0, 0, 0]), 0);
        // xor %edx,%edx writes an argument register.
        assert_eq!(emulated_offset(&[0x31, 0xd2, 0xe8, 0, 0, 0, 0]), 0);
        // test with a memory operand (mod != 3) is not walked over.
        assert_eq!(emulated_offset(&[0x85, 0x07, 0x74, 0x02]), 0);
        // A branch cut short by the end of the bytes read.
        assert_eq!(emulated_offset(&[0x48, 0x83, 0xec, 0x08, 0xe8, 0x01]), 0);
        assert_eq!(emulated_offset(&[]), 0);
        // More than MAX_PROLOGUE_INSNS harmless instructions.
        let long: Vec<u8> = std::iter::repeat_n([0x31u8, 0xc0], MAX_PROLOGUE_INSNS)
            .flatten()
            .chain([0xeb, 0x00])
            .collect();
        assert_eq!(emulated_offset(&long), 0);
        // A branch first: the entry itself is emulated.
        assert_eq!(emulated_offset(&[0xe9, 0, 0, 0, 0]), 0);
    }

    #[test]
    fn the_systems_libssl_write_probes_skip_the_single_step() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !lib.exists() {
            return;
        }
        for sym in ["SSL_write", "SSL_write_ex", "SSL_free"] {
            let code = function_bytes(lib, sym).unwrap();
            let off = entry_offset(lib, sym) as usize;
            assert!(off > 0, "{sym}: {code:02x?}");
            assert!(is_emulated(&code[off..]), "{sym} at {off}");
        }
        assert!(function_bytes(lib, "no_such_function").is_err());
    }
}
