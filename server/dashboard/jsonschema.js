// Forms that start from a JSON schema (the runner's arguments, a new document's fields): a value
// of the right shape to edit, built from the schemas pydantic draws for functions and tables
// (`_system/dashboard:functions`, `_system/dashboard:tables`).

/** A value to start from for a JSON schema: its default, else an empty value of its type. */
export function sampleOf(schema, defs = {}) {
  if (!schema || typeof schema !== "object") return null;
  if ("default" in schema) return schema.default;
  if (schema.$ref) return sampleOf(defs[schema.$ref.split("/").pop()], defs);
  if (schema.const !== undefined) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  const options = schema.anyOf ?? schema.oneOf;
  if (Array.isArray(options) && options.length) {
    return sampleOf(options.find((o) => o.type !== "null") ?? options[0], defs);
  }
  switch (Array.isArray(schema.type) ? schema.type[0] : schema.type) {
    case "string": return "";
    case "integer": return (schema.maximum ?? 0) >= 2 ** 63 - 1 ? 0n : 0; // an Int64's bounds: a bigint
    case "number": return 0;
    case "boolean": return false;
    case "array": return [];
    case "null": return null;
    case "object": {
      const out = {};
      const required = new Set(schema.required ?? []);
      for (const [name, prop] of Object.entries(schema.properties ?? {})) {
        if (!required.has(name)) continue;
        // A paginated query's options are a plain object to pydantic; start from the first page.
        out[name] = name === "paginationOpts" ? { numItems: 10, cursor: null } : sampleOf(prop, { ...defs, ...(schema.$defs ?? {}) });
      }
      return out;
    }
    default: return null;
  }
}
