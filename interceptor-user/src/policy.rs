//! Authorization policy: roles, grants scoped to MCP methods/tools/resources/prompts, argument
//! constraints, purpose and lawful basis.
