//! Search mode of the MCP front door, for large catalogs: instead of every tool's
//! definition, `tools/list` offers two meta-tools — `toolplane_select` (describe a task,
//! get the best tools you may use with their input schemas) and `toolplane_call` (call
//! any tool you may use by name with its arguments). A `toolplane_call` runs exactly
//! the pipeline a direct `tools/call` runs (permission, validation, quotas, rate
//! limits, audit, learning): it is only another way to name the tool.
//!
//! Search mode is on for the agents `TOOLPLANE_MCP_SEARCH_AGENTS` names, and for any
//! agent that may use more tools than `TOOLPLANE_MCP_SEARCH_ABOVE`.

use std::sync::Arc;

use rmcp::model::{Tool as McpTool, ToolAnnotations};
use serde_json::{Map, Value, json};
use toolplane_core::model::Agent;

/// The meta-tool that calls a tool by name.
pub const CALL_TOOL: &str = "toolplane_call";

/// When an agent's `tools/list` holds the meta-tools only.
#[derive(Debug, Clone, Default)]
pub struct SearchMode {
    /// Search mode for an agent that may use more tools than this; 0: never by count.
    pub above: usize,
    /// Agents (by id or name) always in search mode.
    pub agents: Vec<String>,
}

impl SearchMode {
    pub fn applies(&self, agent: &Agent, granted: usize) -> bool {
        (self.above > 0 && granted > self.above)
            || self
                .agents
                .iter()
                .any(|a| *a == agent.name || *a == agent.id.to_string())
    }
}

fn schema(v: Value) -> Arc<Map<String, Value>> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

/// `toolplane_call`'s definition.
pub fn call_tool() -> McpTool {
    McpTool::new(
        CALL_TOOL,
        "Call a tool you may use by its name (as toolplane_select returned it) with its arguments, which must \
         match the tool's input schema.",
        schema(
            json!({"type": "object", "required": ["tool"], "additionalProperties": false, "properties": {
                "tool": {"type": "string", "description": "The tool's name"},
                "arguments": {"type": "object", "description": "The tool's arguments (its input schema)"}
            }}),
        ),
    )
    .annotate(
        ToolAnnotations::new()
            .read_only(false)
            .destructive(true)
            .idempotent(false),
    )
}

/// The tool and arguments a `toolplane_call` names, or what is wrong with it (said
/// like a validation error, with the JSON pointer at fault).
pub fn target(args: &Value) -> Result<(String, Value), String> {
    let tool = match args.get("tool") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        _ => return Err("VALIDATION_ERROR: /tool: the name of the tool to call is required".to_owned()),
    };
    if tool == CALL_TOOL || tool == crate::mcp_server::SELECT_TOOL {
        return Err(format!("VALIDATION_ERROR: /tool: call {tool} directly"));
    }
    let arguments = match args.get("arguments") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return Err("VALIDATION_ERROR: /arguments: must be an object".to_owned()),
    };
    Ok((tool, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_names_a_tool_and_an_object_of_arguments() {
        assert_eq!(
            target(&json!({"tool": "word_count", "arguments": {"text": "a"}})),
            Ok(("word_count".to_owned(), json!({"text": "a"})))
        );
        assert_eq!(target(&json!({"tool": "x"})), Ok(("x".to_owned(), json!({}))));
        assert!(target(&json!({})).unwrap_err().contains("/tool"));
        assert!(
            target(&json!({"tool": "x", "arguments": [1]}))
                .unwrap_err()
                .contains("/arguments")
        );
        assert!(target(&json!({"tool": CALL_TOOL})).unwrap_err().contains("directly"));
    }

    #[test]
    fn search_mode_by_count_or_by_agent() {
        let agent = toolplane_core::testutil::agent("big");
        let by_count = SearchMode {
            above: 100,
            agents: vec![],
        };
        assert!(!by_count.applies(&agent, 100));
        assert!(by_count.applies(&agent, 101));
        let by_name = SearchMode {
            above: 0,
            agents: vec!["big".into()],
        };
        assert!(by_name.applies(&agent, 1));
        assert!(!SearchMode::default().applies(&agent, 10_000));
    }
}
