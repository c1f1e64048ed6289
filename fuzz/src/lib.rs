//! What the fuzz targets share: reading an input as a stream of choices.

/// Reads the input a byte at a time; zeros once exhausted, so every input is a complete run.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next byte, or 0.
    pub fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | u16::from(self.byte()) << 8
    }

    /// An allocation size: mostly small, sometimes any slab size, now and then up to 1 MiB.
    pub fn size(&mut self) -> usize {
        let raw = usize::from(self.u16());
        match self.byte() % 16 {
            0 => raw * 16,  // up to 1 MiB: vmap
            1..=3 => raw,   // up to 64 KiB: every slab class
            _ => raw % 600, // small
        }
    }
}
