//! Camera pixel formats to RGB: packed YUYV (BT.601, limited range, as UVC webcams send) and MJPEG.

use std::io::Cursor;

use cavsync_core::preprocess::image::decode_guarded;

/// Why a camera buffer could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum PixelError {
    /// The buffer is shorter than the frame needs.
    #[error("{format} buffer holds {got} bytes; a {width}x{height} frame needs {needed}")]
    Short {
        /// Pixel format.
        format: &'static str,
        /// Frame width.
        width: usize,
        /// Frame height.
        height: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// An MJPEG frame did not decode.
    #[error("MJPEG frame: {0}")]
    Jpeg(String),
    /// An MJPEG frame decoded to another size than negotiated.
    #[error("MJPEG frame is {found_w}x{found_h}; {width}x{height} was negotiated")]
    Size {
        /// Negotiated width.
        width: usize,
        /// Negotiated height.
        height: usize,
        /// Decoded width.
        found_w: u32,
        /// Decoded height.
        found_h: u32,
    },
}

/// One BT.601 limited-range YCbCr sample to RGB.
fn ycbcr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let c = (i32::from(y) - 16) * 298;
    let d = i32::from(cb) - 128;
    let e = i32::from(cr) - 128;
    let clamp = |v: i32| ((v + 128) >> 8).clamp(0, 255) as u8;
    [
        clamp(c + 409 * e),
        clamp(c - 100 * d - 208 * e),
        clamp(c + 516 * d),
    ]
}

/// Converts a packed YUYV (Y0 U Y1 V) frame of `width` x `height` into RGB8 `dst`; allocation-free.
pub fn yuyv_to_rgb(
    src: &[u8],
    width: usize,
    height: usize,
    dst: &mut [u8],
) -> Result<(), PixelError> {
    let needed = width * height * 2;
    if src.len() < needed || dst.len() < width * height * 3 {
        return Err(PixelError::Short {
            format: "YUYV",
            width,
            height,
            needed,
            got: src.len(),
        });
    }
    for (quad, out) in src[..needed].chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
        let (y0, u, y1, v) = (quad[0], quad[1], quad[2], quad[3]);
        out[..3].copy_from_slice(&ycbcr_to_rgb(y0, u, v));
        out[3..].copy_from_slice(&ycbcr_to_rgb(y1, u, v));
    }
    Ok(())
}

/// Decodes an MJPEG frame into RGB8 `dst` of `width` x `height` (the decoder allocates its own scratch); a frame whose header gives another size, or a `dst` too small, is refused before decoding.
pub fn mjpeg_to_rgb(
    src: &[u8],
    width: usize,
    height: usize,
    dst: &mut [u8],
) -> Result<(), PixelError> {
    let needed = width.saturating_mul(height).saturating_mul(3);
    if dst.len() < needed {
        return Err(PixelError::Short {
            format: "RGB",
            width,
            height,
            needed,
            got: dst.len(),
        });
    }
    let jpeg = || image::ImageReader::with_format(Cursor::new(src), image::ImageFormat::Jpeg);
    let jpeg_err = |e: image::ImageError| PixelError::Jpeg(e.to_string());
    let (found_w, found_h) = jpeg().into_dimensions().map_err(jpeg_err)?;
    let size_err = |found_w, found_h| PixelError::Size {
        width,
        height,
        found_w,
        found_h,
    };
    if found_w as usize != width || found_h as usize != height {
        return Err(size_err(found_w, found_h));
    }
    let img = decode_guarded(|| jpeg().decode())
        .map_err(jpeg_err)?
        .into_rgb8();
    if img.width() as usize != width || img.height() as usize != height {
        return Err(size_err(img.width(), img.height()));
    }
    dst[..needed].copy_from_slice(img.as_raw());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_primaries_and_greys_convert_as_bt601() {
        // White (235), black (16), and BT.601 limited-range red (81, 90, 240).
        let src = [235, 128, 16, 128, 81, 90, 81, 240];
        let mut dst = [0u8; 12];
        yuyv_to_rgb(&src, 4, 1, &mut dst).unwrap();
        assert_eq!(&dst[..6], &[255, 255, 255, 0, 0, 0]);
        let red = &dst[6..9];
        assert!(red[0] >= 250 && red[1] <= 5 && red[2] <= 5, "{red:?}");
        assert!(yuyv_to_rgb(&src[..6], 4, 1, &mut dst).is_err());
    }

    #[test]
    fn mjpeg_decodes_and_checks_its_size() {
        let img = image::RgbImage::from_pixel(16, 8, image::Rgb([200, 30, 40]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(&img)
            .unwrap();
        let mut dst = vec![0u8; 16 * 8 * 3];
        mjpeg_to_rgb(&jpeg, 16, 8, &mut dst).unwrap();
        assert!((i32::from(dst[0]) - 200).abs() < 8 && dst[1] < 45);
        assert!(matches!(
            mjpeg_to_rgb(&jpeg, 8, 8, &mut dst),
            Err(PixelError::Size { .. })
        ));
        assert!(mjpeg_to_rgb(&jpeg[..10], 16, 8, &mut dst).is_err());
    }
}
