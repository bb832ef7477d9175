// Test-only services for versioned deployments: the same jar serves "v1" or "v2" code, chosen by
// env SERVICE_VERSION, so a test can run two versions side by side at two URIs.
package dev.kiln.testservices

import dev.kiln.sdk.Context
import dev.kiln.sdk.Handler
import dev.kiln.sdk.Service
import dev.kiln.sdk.Shared
import dev.kiln.sdk.SharedWorkflowContext
import dev.kiln.sdk.Workflow
import dev.kiln.sdk.WorkflowContext
import dev.kiln.sdk.promise

/** The code version this process serves: env `SERVICE_VERSION`, default "v1". */
val SERVICE_VERSION: String = System.getenv("SERVICE_VERSION") ?: "v1"

/** A workflow that waits for its promise "approval"; its result names the code version that ran it. */
@Workflow
class Release {
    /** Awaits promise "approval", then returns `"<version>:<name>:<approval>"`. */
    @Workflow
    suspend fun run(ctx: WorkflowContext, name: String): String {
        val approval = ctx.promise<String>("approval").await()
        return "$SERVICE_VERSION:$name:$approval"
    }

    /** Resolves promise "approval" with [by]. */
    @Shared
    suspend fun approve(ctx: SharedWorkflowContext, by: String): String {
        ctx.promise<String>("approval").resolve(by)
        return "approved"
    }
}

/** Served only by versions other than "v1": what makes v2's discovery differ from v1's. */
@Service
class ReleaseNotes {
    /** Returns `"<version> notes"`. */
    @Handler
    suspend fun latest(ctx: Context): String = "$SERVICE_VERSION notes"
}
