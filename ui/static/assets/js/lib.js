// The one place the vendored libraries are imported: Preact renders, htm turns tagged templates into
// Preact elements (no build step), and the hooks hold component state.
import { h, render } from "preact";
import htm from "htm";

export { h, render };
export { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
export const html = htm.bind(h);
